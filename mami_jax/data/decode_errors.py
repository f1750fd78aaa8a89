"""The one error every image reader raises, so callers catch a single type."""


class DecodeError(RuntimeError):
    """An image, volume or series could not be read; the message names the path."""


def dataset_place(ds) -> str:
    """How an error names a DICOM dataset: its file, else that it was read from memory."""
    return getattr(ds, "filename", None) or "<DICOM dataset>"
