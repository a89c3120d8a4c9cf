"""Every command answers --help (the CLI is assembled from runstream/commands/*)."""

from __future__ import annotations

import argparse

import pytest

from runstream.cli import build_parser, main


def _subcommands() -> list[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(actions[0].choices)


def test_core_commands_are_registered() -> None:
    assert {"up", "dev-kafka", "topics"} <= set(_subcommands())


@pytest.mark.parametrize("command", _subcommands())
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: runstream" in capsys.readouterr().out


def test_unknown_command_fails() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_commands_that_do_not_run_until_stopped_get_the_default_sigterm_back() -> None:
    import signal

    from runstream import startup

    previous = signal.getsignal(signal.SIGTERM)
    try:
        startup.install()
        assert main(["schema", "prediction-event"]) == 0
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("argv", [["topics", "create"], ["run", "--role", "uploader"]])
def test_commands_that_need_kafka_name_the_missing_setting(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RUNSTREAM_KAFKA_BOOTSTRAP", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "RUNSTREAM_KAFKA_BOOTSTRAP is not set" in err and "runstream dev-kafka start" in err
