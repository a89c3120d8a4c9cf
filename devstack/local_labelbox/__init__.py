"""Local Labelbox-compatible API (DESIGN §7): a real server the official SDK can talk to."""

from __future__ import annotations

from devstack.local_labelbox.app import DEFAULT_MAX_BODY_SIZE, LocalLabelbox

__all__ = ["DEFAULT_MAX_BODY_SIZE", "LocalLabelbox"]
