"""Opaque cursors for ``annotationGroups`` pagination.

Pure. A cursor names the last row of a page by its insertion sequence number, so pages stay
stable while rows are being added; it is base64 so clients treat it as opaque.
"""

from __future__ import annotations

import base64
import binascii

_PREFIX = "mrdr:"


class InvalidCursorError(ValueError):
    """The ``after`` argument is not a cursor this server issued."""


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_PREFIX}{seq}".encode()).decode()


def decode_cursor(cursor: str | None) -> int:
    """Sequence number after which the next page starts (0 for the first page)."""
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursorError(f"invalid cursor {cursor!r}") from exc
    if not text.startswith(_PREFIX) or not text[len(_PREFIX) :].isdigit():
        raise InvalidCursorError(f"invalid cursor {cursor!r}")
    return int(text[len(_PREFIX) :])


def end_cursor(page_seqs: list[int], has_more: bool) -> str | None:
    """The SDK stops paging on a falsy cursor, so the last page must return null."""
    if not has_more or not page_seqs:
        return None
    return encode_cursor(page_seqs[-1])
