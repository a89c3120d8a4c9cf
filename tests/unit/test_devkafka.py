from __future__ import annotations

import re
from pathlib import Path

import pytest

from devstack.kafka_broker import (
    DEPLOY_DIR,
    DevKafka,
    DevKafkaError,
    ensure_jars,
    new_cluster_id,
    render_server_properties,
)


def test_cluster_id_is_22_urlsafe_chars() -> None:
    for _ in range(200):
        cid = new_cluster_id()
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cid)


def test_render_fills_ports_and_overrides_extra() -> None:
    template = (DEPLOY_DIR / "server.properties.in").read_text()
    out = render_server_properties(
        template, data_dir=Path("/d"), broker_port=1, controller_port=2, extra={"num.partitions": "7", "x.y": "z"}
    )
    assert "listeners=PLAINTEXT://127.0.0.1:1,CONTROLLER://127.0.0.1:2" in out
    assert "log.dirs=/d/kraft-logs" in out
    lines = out.splitlines()
    assert "num.partitions=7" in lines and "num.partitions=1" not in lines
    assert "x.y=z" in out
    assert "@DATA@" not in out and "_PORT@" not in out


def test_missing_maven_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither mvn nor java
    with pytest.raises(DevKafkaError, match="'mvn' is not on PATH"):
        ensure_jars("4.4.0", cache_dir=tmp_path)


def test_load_state_without_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DevKafkaError, match="no dev broker state"):
        DevKafka.load_state(tmp_path / "nope.json")
