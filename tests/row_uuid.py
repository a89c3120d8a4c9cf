"""Row uuids for tests: the event contract requires a UUID string, these keep a readable tag behind one."""

from __future__ import annotations

import uuid


def row_uuid(tag: str) -> str:
    """The same UUID for the same tag, a different one for another tag.

    A tag of up to 16 bytes is written into the UUID itself (hex, zero-padded), so UUIDs sort like their
    tags (``row_uuid("a") < row_uuid("b")``) for tests that read rows back in uuid order.
    """
    raw = tag.encode()
    if len(raw) > 16:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"runstream-test:{tag}"))
    h = raw.hex().ljust(32, "0")
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
