"""File names as valid UTF-8 text, the same way everywhere they are shown or stored.

On POSIX a file name is bytes. Python decodes the bytes that are not UTF-8 to lone surrogates
(``b"\\xff"`` -> ``"\\udcff"``) so that the name still opens the file, but such a string cannot be
written as UTF-8: printing it raises ``UnicodeEncodeError`` under a UTF-8 locale, and JSON parsers
that check Unicode reject the ``\\udcff`` escape. bneck writes each such byte as the four
characters ``\\xNN`` instead: in the HDF5 ``paths`` dataset, in ``--json`` output and in text
output, so a name reads the same in all three.
"""

from __future__ import annotations

import codecs

ERRORS = "bneck-names"  # a codecs error handler name, usable as ``errors=`` of any text stream


def _escape(exc: UnicodeError):
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for ch in exc.object[exc.start:exc.end]:
        o = ord(ch)
        # U+DC80..U+DCFF are the bytes 0x80..0xFF that os.fsdecode could not decode.
        out.append(f"\\x{o - 0xDC00:02x}" if 0xDC80 <= o <= 0xDCFF else f"\\u{o:04x}" if o <= 0xFFFF
                   else f"\\U{o:08x}")
    return "".join(out), exc.end


codecs.register_error(ERRORS, _escape)


def printable(name: str) -> str:
    """``name`` as valid UTF-8 text: each undecodable file-name byte becomes ``\\xNN``."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", ERRORS).decode("utf-8")


def escape_unencodable_output(*streams) -> None:
    """Make text streams write unencodable characters as escapes instead of raising mid-output."""
    for stream in streams:
        try:
            stream.reconfigure(errors=ERRORS)
        except (AttributeError, ValueError, OSError):  # not a TextIOWrapper (a test's capture), or closed
            pass
