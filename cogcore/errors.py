"""One exception family for everything the runtime refuses.

Every message says where (file, tensor or key), what was expected and what was
found, so that a user can fix the input without reading the code.
"""


class CogcoreError(Exception):
    """Base class of every error raised by cogcore."""


class ConfigError(CogcoreError, ValueError):
    """A config.json that is missing, unreadable, or has a value out of range."""


class WeightsError(CogcoreError, ValueError):
    """A weights file or tensor that is missing, corrupt, misshapen or unexpected."""


class InputError(CogcoreError, ValueError):
    """A call with bad arguments: token ids out of range, empty prompt, bad sampling option."""
