"""Row uuids for tests: the event contract requires a UUID string, these keep a readable tag behind one."""

from __future__ import annotations

import uuid


def row_uuid(tag: str) -> str:
    """The same UUID for the same tag, a different one for another tag."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"runstream-test:{tag}"))
