"""Subcommands of `cogcore`: each module has `add_arguments(parser)` and `run(args)`."""
