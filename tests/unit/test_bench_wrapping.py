"""The measuring scripts' command line: their options, then ``--`` and the command to run."""

from __future__ import annotations

import argparse

import pytest

from invoicectl.bench.wrapping import parse_with_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="measure")
    parser.add_argument("--top", type=int, default=12)
    return parser


def test_the_command_after_the_dashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["measure", "--top", "3", "--", "invoicectl", "bench", "--count", "5"])
    args = parse_with_command(_parser())
    assert args.top == 3
    assert args.command == ["invoicectl", "bench", "--count", "5"]


def test_no_command_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.argv", ["measure", "--top", "3", "--"])
    with pytest.raises(SystemExit) as exited:
        parse_with_command(_parser())
    assert exited.value.code == 2
    assert "give the command to run after --" in capsys.readouterr().err
