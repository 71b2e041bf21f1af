"""The one exception type the CLI turns into a single clear line."""


class TgddError(Exception):
    """A user-facing error: bad input, missing files, mismatched artifacts."""
