"""(not yet implemented: bench)"""


def add_arguments(p):
    pass


def run(args):
    from ..errors import CogcoreError
    raise CogcoreError("'bench' is not implemented yet")
