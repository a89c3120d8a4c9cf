"""Process-wide garbage-collector settings for the long-running consumer processes.

Every consumed message allocates a dozen short-lived containers and leaves a few long-lived ones
in a batch or a cache, so with CPython's default thresholds (700, 10, 10) a full collection --
which walks every live object, including everything imported -- runs every ~70k messages.
Measured in the uploader process: full collections were ~25 % of the per-message CPU. Freezing
what exists after start-up and a larger young generation make them rare; reference counting still
frees almost everything at once (the hot paths build no cycles), so memory is unchanged.

Only process entry points call :func:`tune_gc` (``runstream run``, ``python -m consumers.uploader``), never
library code: the setting is global to the interpreter.
"""

from __future__ import annotations

import gc
import time

GC_THRESHOLD_0 = 20_000  # young-generation size of the consumer processes


_tuned = False


def tune_gc(threshold0: int = GC_THRESHOLD_0) -> None:
    global _tuned
    _tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold0, 10, 10)


def tuned() -> bool:
    """The process entry point took over the collector (:func:`tune_gc`): loops may manage it too."""
    return _tuned


class BatchGc:
    """Collector policy of a loop that applies large batches into a long-lived cache (the aggregator).

    Why: every applied message leaves a few dozen tracked containers alive (cached trees, node
    dicts, the batch's parsed operations), so young collections keep traversing survivors that
    no cycle can free: measured on the aggregator bench workload, 15-20 us of collector time per
    message, about a fifth of the loop. So the automatic collector is off while a batch is
    applied (:meth:`pause`), and what survived it is frozen afterwards (:meth:`resume`):
    ``gc.freeze`` is O(1) and never traverses. Frozen objects are still freed by reference
    counting when the cache evicts them; only garbage *cycles* wait for a full collection of
    everything (unfreeze, collect, freeze; about 1 us per live object, 0.3-0.6 s with a full
    cache). It runs when the loop has been idle for ``quiet_s`` (:meth:`idle`), ``idle_every_s``
    passed since the last one and a batch was frozen since (an idle loop that serves queries pays it
    once, not every minute), and under sustained load at the end of a batch once ``busy_every_s``
    passed. Not on growth of the frozen set: that grows by the cache's own live objects while it
    fills, and a full collection then frees nothing. The loop builds no cycles per message, so the garbage
    waiting is what the event loop and clients leave in those minutes.
    """

    def __init__(
        self, *, idle_every_s: float = 60.0, busy_every_s: float = 600.0, quiet_s: float = 2.0
    ) -> None:
        self.idle_every_s = idle_every_s
        self.busy_every_s = busy_every_s
        # How long the loop must have had nothing to do before it counts as idle: one empty poll in
        # the middle of a catch-up (the fetcher a little behind) is not a pause worth a full collection.
        self.quiet_s = quiet_s
        self._quiet_since: float | None = None
        self.full_collections = 0
        self._paused = False
        self._last_full = time.monotonic()
        # Whether anything was frozen since the last full collection: only frozen garbage needs one
        # (the collector, on between batches, frees unfrozen cycles), so an idle loop pays it once.
        self._frozen_since_full = False

    def pause(self) -> None:
        """A batch starts: no automatic collections until :meth:`resume` (if the collector is on)."""
        if gc.isenabled():
            gc.disable()
            self._paused = True

    def resume(self) -> None:
        """The batch is applied: freeze its survivors, collect everything if overdue, collector back on."""
        if not self._paused:
            return
        self._paused = False
        self._quiet_since = None
        gc.freeze()
        self._frozen_since_full = True
        if time.monotonic() - self._last_full >= self.busy_every_s:
            self._full()
        gc.enable()

    def idle(self) -> None:
        """The loop has nothing to do: a good moment for the full collection, if one is due and the
        loop has been quiet for ``quiet_s`` (every batch since resets that)."""
        now = time.monotonic()
        if self._quiet_since is None:
            self._quiet_since = now
        if (
            self._frozen_since_full
            and not self._paused
            and gc.isenabled()
            and now - self._quiet_since >= self.quiet_s
            and now - self._last_full >= self.idle_every_s
        ):
            self._full()

    def _full(self) -> None:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.full_collections += 1
        self._last_full = time.monotonic()
        self._frozen_since_full = False
