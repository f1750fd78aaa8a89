"""What a spreadsheet does to the CSV files a user edits (manifests, labels tables), named.

A spreadsheet in a locale with decimal commas saves "CSV" separated by ';', some save tabs,
and plain "CSV" is Latin-1 or Windows-1252 rather than UTF-8. Read as UTF-8 comma-separated
text, such a file failed as "no column 'image_id'" or with the decoder's byte offset into
a buffer; these helpers say which of them it is, on which line, and how to save it.
"""

from __future__ import annotations


def separated_otherwise(header: list[str]) -> str | None:
    """"';'" or "tabs" when ``header`` (a CSV's first row read with commas) is one field
    holding the other separator, else None."""
    if len(header) != 1:
        return None
    if ";" in header[0]:
        return "';'"
    if "\t" in header[0]:
        return "tabs"
    return None


def not_utf8(path: str) -> str:
    """Where the file ``path`` stops being UTF-8 and how to save it: "line N is not UTF-8
    text (byte 0xE9 at column C: ...); save it as UTF-8 ...", N the line an editor shows;
    or that it is no text at all (an image given in place of the table)."""
    with open(path, "rb") as f:
        if b"\0" in f.read(8192):
            return "not a text file (it holds NUL bytes: an image, an archive?)"
        f.seek(0)
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return (f"line {number} is not UTF-8 text (byte 0x{line[e.start]:02X} at "
                        f"column {e.start + 1}: Latin-1 or Windows-1252, as a spreadsheet saves "
                        "plain 'CSV'?); save it as UTF-8 (a spreadsheet's 'CSV UTF-8')")
    return "not UTF-8 text; save it as UTF-8 (a spreadsheet's 'CSV UTF-8')"
