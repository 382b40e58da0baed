"""`python -m cogcore` is the `cogcore` command."""

from .cli import main

raise SystemExit(main())
