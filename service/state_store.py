"""Aggregator state; the implementation lives in :mod:`service.state` (one module per concern).

This module re-exports the names other modules import from here.
"""

from service.state import (
    CachedState,
    Changes,
    Checkpoint,
    EncodedChanges,
    NodeRow,
    SqlStateBackend,
    StaleStateError,
    StateBackend,
    StateReader,
    StateStoreError,
    TopicPartition,
    decode_tree,
    open_backend,
    tree_node_values,
)

__all__ = [
    "CachedState",
    "Changes",
    "Checkpoint",
    "EncodedChanges",
    "NodeRow",
    "SqlStateBackend",
    "StaleStateError",
    "StateBackend",
    "StateReader",
    "StateStoreError",
    "TopicPartition",
    "decode_tree",
    "open_backend",
    "tree_node_values",
]
