"""(not yet implemented: generate)"""


def add_arguments(p):
    pass


def run(args):
    from ..errors import CogcoreError
    raise CogcoreError("'generate' is not implemented yet")
