"""The uploader's import file never carries one uuid twice: each uuid's last row (offset order) wins."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.labelbox.import_dedup import last_versions


def message(*rows: tuple[str, int]) -> tuple[list[tuple[str, str]], bytes]:
    """A message whose rows are (uuid, version)."""
    lines = [orjson.dumps({"uuid": u, "dataRow": {"id": "d"}, "v": v}) for u, v in rows]
    return [(u, "id:d") for u, _ in rows], b"\n".join(lines)


def decoded(payload: bytes) -> list[tuple[str, int]]:
    return [(r["uuid"], r["v"]) for r in map(orjson.loads, payload.split(b"\n"))] if payload else []


def test_no_repeats_is_the_plain_join() -> None:
    msgs = [message(("a", 1), ("b", 1)), message(("c", 1))]
    out = last_versions(msgs)
    assert out.superseded == 0
    assert out.payload == msgs[0][1] + b"\n" + msgs[1][1]


def test_the_last_version_in_offset_order_wins() -> None:
    msgs = [message(("a", 1), ("b", 1)), message(("c", 1), ("a", 2)), message(("a", 3)), message(("b", 2))]
    out = last_versions(msgs)
    assert out.superseded == 3
    assert decoded(out.payload) == [("c", 1), ("a", 3), ("b", 2)]


def test_repeats_inside_one_message() -> None:
    out = last_versions([message(("a", 1), ("a", 2), ("b", 1))])
    assert out.superseded == 1
    assert decoded(out.payload) == [("a", 2), ("b", 1)]


def test_rows_and_lines_must_agree() -> None:
    rows, payload = message(("a", 1), ("a", 2))
    with pytest.raises(ValueError, match="2 rows but 1 payload lines"):
        last_versions([(rows, payload.split(b"\n")[0])])


@given(st.lists(st.lists(st.sampled_from("abcde"), min_size=1, max_size=4), max_size=6))
def test_each_uuid_once_with_its_last_version(uuids: list[list[str]]) -> None:
    msgs, n, want = [], 0, {}
    for us in uuids:
        rows = []
        for u in us:
            n += 1
            rows.append((u, n))
            want[u] = n
        msgs.append(message(*rows))
    out = last_versions(msgs)
    got = decoded(out.payload)
    assert sorted(got) == sorted(want.items())
    assert [v for _, v in got] == sorted(v for _, v in got)  # offset order kept
    assert out.superseded == n - len(want)
