"""Aggregator state, one module per concern.

- ``codec``: the stored forms (tree rows, run-aggregate rows) and a commit's :class:`Changes`.
- ``store``: :class:`SqlStateBackend` (SQLite or PostgreSQL): schema, loads, the one commit
  transaction of state and offsets, fencing of stale replicas.
- ``query``: the read-only interface the HTTP API and the trend history use.
- ``cache``: :class:`CachedState`, the write-back cache the batch update runs against.
- ``checkpoint``: :class:`Checkpoint`, the commit lifecycle (stored offsets, the pipelined
  commit, fencing, assignment, the interval tick, close).
"""

from service.state.cache import CachedState
from service.state.checkpoint import Checkpoint
from service.state.codec import Changes, EncodedChanges, decode_tree, tree_node_values
from service.state.query import NodeRow, StateQueries, StateReader
from service.state.store import (
    PartitionKey,
    SqlStateBackend,
    StaleStateError,
    StateBackend,
    StateStoreError,
    open_backend,
)

__all__ = [
    "CachedState",
    "Changes",
    "Checkpoint",
    "EncodedChanges",
    "NodeRow",
    "PartitionKey",
    "SqlStateBackend",
    "StaleStateError",
    "StateBackend",
    "StateQueries",
    "StateReader",
    "StateStoreError",
    "decode_tree",
    "open_backend",
    "tree_node_values",
]
