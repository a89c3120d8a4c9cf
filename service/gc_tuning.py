"""Process-wide garbage-collector settings for the long-running consumer processes.

Every consumed message allocates a dozen short-lived containers and leaves a few long-lived ones
in a batch or a cache, so with CPython's default thresholds (700, 10, 10) a full collection --
which walks every live object, including everything imported -- runs every ~70k messages.
Measured in the uploader process: full collections were ~25 % of the per-message CPU. Freezing
what exists after start-up and a larger young generation make them rare; reference counting still
frees almost everything at once (the hot paths build no cycles), so memory is unchanged.

Only process entry points call this (``runstream run``, ``python -m consumers.uploader``), never
library code: the setting is global to the interpreter.
"""

from __future__ import annotations

import gc

GC_THRESHOLD_0 = 20_000  # young-generation size of the consumer processes


def tune_gc(threshold0: int = GC_THRESHOLD_0) -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold0, 10, 10)
