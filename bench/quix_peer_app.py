"""The Quix Streams peer of the aggregator: the same state work as a Quix Streams application.

Runs in its own virtualenv (``.venv-quix``, see pyproject.toml's ``bench-quix`` group) and is
started by bench/bench_quix_peer.py; it imports nothing from runstream.

    .venv-quix/bin/python bench/quix_peer_app.py BOOTSTRAP TOPIC TOTAL OUT.json STATE_DIR

The work per metric row, as the aggregator does it (DESIGN §4): one state value per
(metric, data row) tree under the message key (the model run); the row replaces its leaf; the
tree's node values are recomputed (subclass → feature → data row, explicit over roll-up, each
confidence key its own tree); every node whose value changed moves its per-run aggregate
(another state value). Exactly-once processing, commit interval 1 s, RocksDB state with
changelog topics (Quix Streams' defaults for stateful apps).

Writes OUT.json: the processing rate (first message → app stopped, state committed) and the
per-run aggregates it ended with, which the bench compares with the aggregator's store.
"""

from __future__ import annotations

import json
import math
import sys
import time
import uuid
from typing import Any

from quixstreams import Application, State


def _value(v: Any, aggregation: str) -> Any:
    if aggregation == "CONFUSION_MATRIX":
        return [int(x) for x in v]
    return float(v)


def _agg(vs: list[Any], aggregation: str) -> Any:
    if aggregation == "CONFUSION_MATRIX":
        return [sum(v[i] for v in vs) for i in range(4)]
    if aggregation == "SUM":
        return math.fsum(vs)
    if aggregation == "ARITHMETIC_MEAN":
        return math.fsum(vs) / len(vs)
    if 0.0 in vs:
        return 0.0
    if aggregation == "GEOMETRIC_MEAN":
        return math.exp(math.fsum(math.log(v) for v in vs) / len(vs))
    return len(vs) / math.fsum(1.0 / v for v in vs)


def node_values(leaves: dict[str, dict[str, Any]], aggregation: str) -> dict[str, Any]:
    """'ck|level|feature|subclass' -> value, explicit values beating roll-ups."""
    direct: dict[tuple[str, int, str, str], list[Any]] = {}
    for where, values in leaves.items():
        lvl, f, s = where.split("|")
        for ck, v in values.items():
            direct.setdefault((ck, int(lvl), f, s), []).append(v)
    out = {k: _agg(vs, aggregation) for k, vs in direct.items()}
    for level in (2, 1):
        children: dict[tuple[str, int, str, str], list[Any]] = {}
        for (ck, lvl, f, _s), v in out.items():
            if lvl == level:
                parent = (ck, 1, f, "") if level == 2 else (ck, 0, "", "")
                if parent not in direct:
                    children.setdefault(parent, []).append(v)
        for k, vs in children.items():
            out[k] = _agg(vs, aggregation)
    return {f"{ck}|{lvl}|{f}|{s}": v for (ck, lvl, f, s), v in out.items()}


def _move(a: list[Any], v: Any, sign: int, aggregation: str) -> None:
    """Run aggregate [n, zeros, s, tp, fp, tn, fn]: add (sign 1) or remove (-1) one node value."""
    a[0] += sign
    if aggregation == "CONFUSION_MATRIX":
        for i in range(4):
            a[3 + i] += sign * v[i]
    elif aggregation in ("ARITHMETIC_MEAN", "SUM"):
        a[2] += sign * v
    elif v == 0.0:
        a[1] += sign
    else:
        a[2] += sign * (math.log(v) if aggregation == "GEOMETRIC_MEAN" else 1.0 / v)


def main() -> None:
    bootstrap, topic, total_s, out_path, state_dir = sys.argv[1:6]
    total = int(total_s)
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-peer-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        commit_interval=1.0,
        processing_guarantee="exactly-once",
        state_dir=state_dir,
        use_changelog_topics=True,
    )
    mirror: dict[str, dict[str, list[Any]]] = {}  # run -> aggregate key -> what was set in state
    progress = {"n": 0, "t0": 0.0}

    def process(value: dict[str, Any], key: Any, _ts: int, _headers: Any, state: State) -> None:
        if not progress["n"]:
            progress["t0"] = time.perf_counter()
        run = value["model_run_id"]
        for row in value["metrics"]:
            ref = row.get("data_row") or row["dataRow"]
            dr = f"id:{ref['id']}" if "id" in ref else f"gk:{ref.get('globalKey', ref.get('global_key'))}"
            metric = row.get("metric_name") or row["metricName"]
            aggregation = row["aggregation"]
            raw = row["value"] if "value" in row else row["metricValue"]
            f = row.get("feature_name", row.get("featureName"))
            s = row.get("subclass_name", row.get("subclassName"))
            if isinstance(raw, dict):
                values = {repr(float(k)): _value(v, aggregation) for k, v in raw.items()}
            else:
                values = {"": _value(raw, aggregation)}
            level = 0 if f is None else 2 if s is not None else 1
            tkey = f"t|{metric}|{dr}"
            tree = state.get(tkey) or {"l": {}, "n": {}}
            where = f"{level}|{f or ''}|{s or ''}"
            if tree["l"].get(where) == values:
                continue
            tree["l"][where] = values
            old, new = tree["n"], node_values(tree["l"], aggregation)
            for node in old.keys() | new.keys():
                ov, nv = old.get(node), new.get(node)
                if ov == nv:
                    continue
                akey = f"a|{metric}|{node}"
                a = state.get(akey) or [0, 0, 0.0, 0, 0, 0, 0]
                if ov is not None:
                    _move(a, ov, -1, aggregation)
                if nv is not None:
                    _move(a, nv, 1, aggregation)
                state.set(akey, a)
                mirror.setdefault(run, {})[akey[2:]] = a
            tree["n"] = new
            state.set(tkey, tree)
        progress["n"] += 1
        if progress["n"] >= total:
            app.stop()

    sdf = app.dataframe(app.topic(topic, value_deserializer="json", key_deserializer="str"))
    sdf.update(process, stateful=True, metadata=True)
    app.run()
    elapsed = time.perf_counter() - progress["t0"]
    with open(out_path, "w") as fh:
        json.dump({"events": progress["n"], "elapsed_s": elapsed, "rate": progress["n"] / elapsed, "aggs": mirror}, fh)


if __name__ == "__main__":
    main()
