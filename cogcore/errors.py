"""One exception family for everything the runtime refuses.

Every message says where (file, tensor or key), what was expected and what was
found, so that a user can fix the input without reading the code.
"""

import contextlib


class CogcoreError(Exception):
    """Base class of every error raised by cogcore."""


class ConfigError(CogcoreError, ValueError):
    """A config.json that is missing, unreadable, or has a value out of range."""


class WeightsError(CogcoreError, ValueError):
    """A weights file or tensor that is missing, corrupt, misshapen or unexpected."""


class InputError(CogcoreError, ValueError):
    """A call with bad arguments: token ids out of range, empty prompt, bad sampling option."""


@contextlib.contextmanager
def reading(path: str, what: str, error: type[Exception]):
    """Turn the OS's reasons for not reading `path` (the `what`, e.g. "weights file") into
    `error` with a sentence that names the file: missing, a directory, unreadable."""
    try:
        yield
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: expected a {what}, found a directory") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what}: {e.strerror}") from None
