"""(not yet implemented: eval)"""


def add_arguments(p):
    pass


def run(args):
    from ..errors import CogcoreError
    raise CogcoreError("'eval' is not implemented yet")
