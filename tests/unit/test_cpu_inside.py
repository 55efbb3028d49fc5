"""scripts/cpu_inside.py: the broker's threads and PostgreSQL's processes,
grouped, read from a /proc laid out in a temporary directory."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.support import load_script

ci = load_script("cpu_inside")


def _stat(pid: int, parent: int, own: tuple[int, int], reaped: tuple[int, int] = (0, 0), comm: str = "x") -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime ...
    return f"{pid} ({comm}) S {parent} 1 1 0 -1 0 0 0 0 0 {own[0]} {own[1]} {reaped[0]} {reaped[1]} 20 0 1 0"


def _process(proc: Path, pid: int, stat: str, cmdline: str) -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "stat").write_text(stat)
    (proc / str(pid) / "cmdline").write_bytes(cmdline.replace(" ", "\0").encode() + b"\0")


def test_thread_names_are_grouped_without_their_numbers() -> None:
    assert ci.thread_group("data-plane-kafk\n") == "data-plane-kafk"
    assert ci.thread_group("GC Thread#1") == ci.thread_group("GC Thread#0") == "GC Thread#N"
    assert ci.thread_group("C2 CompilerThre") == "CN CompilerThre"


def test_postgres_backends_go_by_account_and_the_rest_by_title() -> None:
    assert ci.pg_role("postgres: status invoicing 127.0.0.1(58890) idle") == "backend: status"
    assert ci.pg_role("postgres: ingest invoicing 127.0.0.1(58878) INSERT waiting") == "backend: ingest"
    assert ci.pg_role("postgres: walwriter   ") == "walwriter"
    assert ci.pg_role("postgres: autovacuum worker invoicing") == "autovacuum worker"


def test_the_postmaster_children_and_strangers(tmp_path: Path) -> None:
    _process(tmp_path, 10, _stat(10, 1, (5, 1), reaped=(30, 2)), "/usr/lib/postgresql/15/bin/postgres -D data")
    _process(tmp_path, 11, _stat(11, 10, (40, 2)), "postgres: status invoicing 127.0.0.1(1) idle")
    _process(tmp_path, 12, _stat(12, 10, (7, 0)), "postgres: status invoicing 127.0.0.1(2) idle")
    _process(tmp_path, 13, _stat(13, 10, (3, 3)), "postgres: walwriter")
    _process(tmp_path, 99, _stat(99, 1, (500, 0)), "python something else")
    (tmp_path / "self").mkdir()  # not a pid: skipped
    found = ci.postgres_processes(10, tmp_path)
    assert found == Counter({"postmaster": 6, ci.REAPED: 32, "backend: status": 49, "walwriter": 6})


def test_a_jvm_threads_are_summed_per_group(tmp_path: Path) -> None:
    for tid, name, ticks in ((20, "data-plane-kafk", 10), (21, "data-plane-kafk", 5), (22, "GC Thread#0", 2)):
        task = tmp_path / "20" / "task" / str(tid)
        task.mkdir(parents=True)
        (task / "comm").write_text(name + "\n")
        # A thread's stat carries its own times; the reaped-children fields are the process's.
        (task / "stat").write_text(_stat(tid, 1, (ticks, 0), reaped=(100, 100), comm=name))
    assert ci.kafka_threads(20, tmp_path) == Counter({"data-plane-kafk": 15, "GC Thread#N": 2})


def test_the_difference_is_in_seconds_largest_first_new_groups_from_zero() -> None:
    before = Counter({"a": 100, "b": 50, "gone": 10})
    after = Counter({"a": 150, "b": 250, "new": 20, "idle": 0})
    assert ci.difference(before, after, 100) == {"b": 2.0, "a": 0.5, "new": 0.2}
