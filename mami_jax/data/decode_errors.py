"""The one error every image reader raises, so callers catch a single type."""


class DecodeError(RuntimeError):
    """An image, volume or series could not be read; the message names the path."""
