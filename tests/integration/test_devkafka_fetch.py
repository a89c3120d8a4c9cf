from __future__ import annotations

from pathlib import Path

import pytest

from service.devkafka import ensure_jars
from service.errors import DevKafkaError


def test_unfetchable_version_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DevKafkaError, match=r"could not fetch Kafka 0\.0\.1 jars"):
        ensure_jars("0.0.1", cache_dir=tmp_path)
