"""(not yet implemented: chat)"""


def add_arguments(p):
    pass


def run(args):
    from ..errors import CogcoreError
    raise CogcoreError("'chat' is not implemented yet")
