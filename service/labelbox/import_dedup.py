"""One uuid once per prediction import: the last version of each annotation in a batch (pure).

Labelbox fails a row whose ``uuid`` an earlier row of the same import already has, so when several
versions of one annotation land in one uploader batch (a producer re-sending a corrected row),
only the last one in offset order may be sent. The earlier ones are *superseded*: Labelbox would
have replaced them anyway, their messages are done (offsets committed) and they are counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ImportRows", "last_versions"]


@dataclass(frozen=True)
class ImportRows:
    """The import file to send, and how many rows were left out as superseded."""

    payload: bytes
    superseded: int


def last_versions(messages: Sequence[tuple[Sequence[tuple[str, str]], bytes]]) -> ImportRows:
    """Join the messages' rows into one NDJSON import, keeping each uuid's last row only.

    ``messages`` are in offset order, each ``(rows, payload)``: ``rows`` is ``(uuid, data row key)``
    per row and ``payload`` those rows' NDJSON lines joined by ``b"\\n"`` (one line per row, in order).
    Surviving rows keep their relative order.
    """
    uuids = [row[0] for rows, _ in messages for row in rows]
    if len(set(uuids)) == len(uuids):  # the usual batch: one plain join (a set is the cheap check)
        return ImportRows(b"\n".join(payload for _, payload in messages), 0)
    last: dict[str, tuple[int, int]] = {}  # uuid -> (message index, row index) of its last row
    for mi, (rows, _) in enumerate(messages):
        for ri, (uuid, _key) in enumerate(rows):
            last[uuid] = (mi, ri)
    superseded = len(uuids) - len(last)
    kept: list[bytes] = []
    for mi, (rows, payload) in enumerate(messages):
        lines = payload.split(b"\n")
        if len(lines) != len(rows):
            raise ValueError(f"message {mi} has {len(rows)} rows but {len(lines)} payload lines")
        pairs = enumerate(zip(rows, lines, strict=True))
        kept += [line for ri, ((uuid, _key), line) in pairs if last[uuid] == (mi, ri)]
    return ImportRows(b"\n".join(kept), superseded)
