"""service.gc_tuning.BatchGc: the collector is off during a batch, survivors are frozen, cycles are
still collected by the periodic full collection. Each case runs in a child interpreter: the policy
changes process-wide collector state that the test process must not inherit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(code: str) -> None:
    prelude = "import gc, time, weakref\nfrom service.gc_tuning import BatchGc, tune_gc, tuned\n"
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_collector_off_during_batch_and_survivors_frozen() -> None:
    run(
        """
        assert not tuned()
        tune_gc()
        assert tuned()
        policy = BatchGc(idle_every_s=1e9, busy_every_s=1e9, quiet_s=0.0)
        before = gc.get_freeze_count()
        policy.pause()
        assert not gc.isenabled()
        kept = [[i] for i in range(5000)]
        policy.resume()
        assert gc.isenabled()
        assert gc.get_freeze_count() >= before + 5000, (before, gc.get_freeze_count())
        assert policy.full_collections == 0
        del kept
        assert gc.get_freeze_count() < before + 5000  # frozen objects are still freed by refcount
        """
    )


def test_cycles_wait_for_the_full_collection() -> None:
    run(
        """
        class Node: pass
        tune_gc()
        policy = BatchGc(idle_every_s=1e9, busy_every_s=1e9, quiet_s=0.0)
        policy.pause()
        a, b = Node(), Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        del a, b
        policy.resume()
        gc.collect()
        assert ref() is not None  # frozen: an ordinary collection does not see it
        policy.idle_every_s = 0.0  # due at the next idle moment, not inside a batch
        policy.pause()
        policy.resume()
        assert policy.full_collections == 0
        policy.idle()
        assert policy.full_collections == 1
        assert ref() is None
        assert gc.isenabled()
        """
    )


def test_an_idle_loop_collects_once_not_every_interval() -> None:
    run(
        """
        tune_gc()
        policy = BatchGc(idle_every_s=0.0, busy_every_s=1e9, quiet_s=0.0)
        policy.idle()
        assert policy.full_collections == 0  # nothing frozen yet: nothing only a full collection frees
        policy.pause()
        policy.resume()
        policy.idle()
        policy.idle()
        assert policy.full_collections == 1  # the second idle moment has no new frozen objects
        policy.pause()
        policy.resume()
        policy.idle()
        assert policy.full_collections == 2
        """
    )


def test_one_empty_poll_during_a_catch_up_is_not_idle() -> None:
    run(
        """
        tune_gc()
        policy = BatchGc(idle_every_s=0.0, busy_every_s=1e9, quiet_s=0.2)
        policy.pause()
        policy.resume()
        policy.idle()  # the first empty poll starts the quiet period
        assert policy.full_collections == 0
        policy.pause()
        policy.resume()  # a batch: the quiet period starts over
        policy.idle()
        time.sleep(0.1)
        policy.idle()
        assert policy.full_collections == 0
        time.sleep(0.15)
        policy.idle()
        assert policy.full_collections == 1
        """
    )


def test_busy_loop_still_collects_in_time() -> None:
    run(
        """
        tune_gc()
        policy = BatchGc(idle_every_s=1e9, busy_every_s=0.0)
        policy.pause()
        policy.resume()
        assert policy.full_collections == 1
        """
    )


def test_a_disabled_collector_is_left_alone() -> None:
    run(
        """
        gc.disable()
        policy = BatchGc(idle_every_s=0.0, busy_every_s=0.0)
        before = gc.get_freeze_count()
        policy.pause()
        policy.resume()
        policy.idle()
        assert not gc.isenabled()
        assert gc.get_freeze_count() == before
        assert policy.full_collections == 0
        """
    )
