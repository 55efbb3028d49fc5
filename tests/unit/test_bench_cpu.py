"""CPU per stack component (invoicectl.bench.cpu): attribution of processes
to components, the difference between two readings, the figures per
invoice, and what the bench reports when nothing can be read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from invoicectl.bench import cpu
from invoicectl.bench.cpu import LOAD_GENERATOR, OTHER, TOTAL, CpuUse, MachineTimes, Process, Reading
from invoicectl.bench.generator import BenchDocument, Kind, Seller
from invoicectl.bench.report import Baselines, BenchReport, Calibration, cpu_rows, render
from invoicectl.bench.runner import Mode, Sent, figures

# init (1) -> postmaster (10) -> backends; the validate service (20) with a
# worker (21) that itself started a helper (22); a shell (30) that started
# the bench (31), a child of the bench (32), and the kernel (2 -> 3).
TABLE = {
    1: Process(0, 5.0, "/sbin/init"),
    2: Process(0, 0.0, ""),
    3: Process(2, 0.5, ""),
    10: Process(1, 1.0, "postgres -D data"),
    11: Process(10, 2.0, "postgres: writer"),
    20: Process(1, 3.0, "/work/.venv/bin/python -m invoicing_validate"),
    21: Process(20, 4.0, "/work/.venv/bin/python -c from multiprocessing"),
    22: Process(21, 0.25, "/usr/bin/helper"),
    30: Process(1, 0.1, "/bin/bash"),
    31: Process(30, 6.0, "/work/.venv/bin/python /work/.venv/bin/invoicectl bench --count 5"),
    32: Process(31, 0.5, "/work/.venv/bin/python -c spawn"),
}
ROOTS = {10: "postgres", 20: "validate", 21: "validate-worker"}


def test_a_process_belongs_to_its_nearest_ancestor_root() -> None:
    assert cpu.component_of(11, TABLE, ROOTS) == "postgres"
    assert cpu.component_of(20, TABLE, ROOTS) == "validate"
    # 22's ancestors are 21 then 20, both roots: the nearer one wins.
    assert cpu.component_of(22, TABLE, ROOTS) == "validate-worker"
    assert cpu.component_of(30, TABLE, ROOTS) is None
    assert cpu.component_of(99, TABLE, ROOTS) is None


def test_a_loop_of_parents_ends_the_walk() -> None:
    looped = {5: Process(6, 0.0, "a"), 6: Process(5, 0.0, "b")}
    assert cpu.component_of(5, looped, {}) is None


def test_processes_outside_the_stack_are_labelled_by_program() -> None:
    assert cpu.label("/bin/bash -c make") == "other: bash"
    assert cpu.label("/work/.venv/bin/python /work/.venv/bin/invoicectl bench --count 5") == "other: invoicectl bench"
    assert cpu.label("python3") == "other: python3"
    assert cpu.label("") == "other: (kernel)"


def test_grouping_names_the_bench_when_asked() -> None:
    groups = cpu.group(TABLE, {**ROOTS, 31: LOAD_GENERATOR})
    assert groups["postgres"] == {"10": 1.0, "11": 2.0}
    assert groups[LOAD_GENERATOR] == {"31": 6.0, "32": 0.5}
    assert groups["other: bash"] == {"30": 0.1}
    assert groups["other: (kernel)"] == {"2": 0.0, "3": 0.5}
    assert sorted(cpu.group(TABLE, ROOTS)["other: invoicectl bench"]) == ["31"]


def test_parse_stat_sums_own_and_reaped_children_time() -> None:
    # The command may hold spaces and parentheses; utime stime cutime cstime
    # are fields 14 to 17.
    text = "4242 (a (b) c) S 77 4242 4242 0 -1 4194304 10 0 0 0 150 50 30 20 20 0 1 0 100 0 0"
    assert cpu.parse_stat(text, 100) == (77, 2.5)


def test_process_seconds_reads_one_process() -> None:
    # This very process: its CPU time can only grow, and /proc is the
    # real one (the function is a reading, not logic).
    before = cpu.process_seconds(os.getpid())
    sum(i * i for i in range(200_000))
    after = cpu.process_seconds(os.getpid())
    assert 0 < before <= after


def test_parse_machine_counts_idle_and_iowait_as_not_busy() -> None:
    text = "cpu  100 10 40 800 50 0 0 0 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    assert cpu.parse_machine(text) == MachineTimes(busy=150, total=1000)
    assert cpu.busy_share(MachineTimes(150, 1000), MachineTimes(450, 1400)) == 0.75
    assert cpu.busy_share(None, MachineTimes(1, 2)) is None


def test_diff_ignores_processes_that_ended_and_counts_new_ones_whole() -> None:
    before = {"validate": {"20": 3.0, "21": 4.0, "23": 9.0}, "other: sh": {"40": 1.0}}
    after = {"validate": {"20": 3.5, "21": 5.0, "24": 0.25}, "other: sh": {"40": 1.0}}
    used = cpu.diff(before, after)
    # 23 ended in between: it counts nothing (not minus its 9 s).
    assert used == {"validate": pytest.approx(1.75), "other: sh": 0.0}


def test_diff_follows_a_process_that_changed_group_and_a_reused_pid() -> None:
    before = {"validate": {"21": 4.0}, "other: x": {"50": 8.0}}
    # 21 was adopted by init when its parent ended; pid 50 is a new process.
    after = {"other: python": {"21": 4.5}, "other: y": {"50": 0.5}}
    assert cpu.diff(before, after) == {"other: python": 0.5, "other: y": 0.5}


def test_per_invoice_divides_folds_others_and_totals_the_stack() -> None:
    used = {"validate": 3.0, "postgres": 1.0, "kafka": 0.5, LOAD_GENERATOR: 0.75, "other: bash": 0.1, "other: sh": 0.15}
    ms = cpu.per_invoice(used, ["kafka", "postgres", "validate", "keycloak"], invoices=250)
    assert ms == {
        "validate": 12.0,
        "postgres": 4.0,
        "kafka": 2.0,
        "keycloak": 0.0,
        LOAD_GENERATOR: 3.0,
        OTHER: 1.0,
        TOTAL: 18.0,
    }
    assert list(ms)[:4] == ["validate", "postgres", "kafka", "keycloak"]
    with pytest.raises(ValueError):
        cpu.per_invoice(used, [], invoices=0)


def _reading(at: float, groups: cpu.Groups, machine: MachineTimes | None = None) -> Reading:
    return Reading(at, groups, frozenset({"validate", "postgres"}), machine)


def test_use_of_a_window() -> None:
    before = _reading(10.0, {"validate": {"20": 1.0}, "postgres": {"10": 1.0}}, MachineTimes(0, 100))
    after = _reading(
        22.5, {"validate": {"20": 2.0}, "postgres": {"10": 1.5}, LOAD_GENERATOR: {"31": 0.2}}, MachineTimes(40, 200)
    )
    use = cpu.use(before, after, invoices=100)
    assert use == CpuUse(
        ms_per_invoice={"validate": 10.0, "postgres": 5.0, LOAD_GENERATOR: 2.0, TOTAL: 15.0},
        window_seconds=12.5,
        busy_share=0.4,
    )
    assert cpu.use(before, after, invoices=0).ms_per_invoice is None


def test_run_dir_comes_from_the_environment() -> None:
    assert cpu.stack_run_dir({"STACK_RUN_DIR": "/srv/run"}, Path(".run")) == Path("/srv/run")
    assert cpu.stack_run_dir({}, Path(".run")) == Path(".run")


def test_roots_are_read_from_pid_files(tmp_path: Path) -> None:
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "ingest.pid").write_text("123\n")
    (tmp_path / "pids" / "broken.pid").write_text("starting")
    assert cpu.read_roots(tmp_path) == {123: "ingest"}
    assert cpu.read_roots(tmp_path / "absent") == {}


def test_without_a_run_dir_the_figure_is_absent_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(cpu.Unavailable, match="no stack pid file"):
        cpu.read(tmp_path / "absent")
    window = cpu.Window(tmp_path / "absent")
    window.start()
    window.stop()
    use = window.use(100)
    assert use.ms_per_invoice is None and use.window_seconds is None
    assert use.unavailable is not None and "pid file" in use.unavailable


def test_without_proc_the_figure_is_absent_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "ingest.pid").write_text("1")
    window = cpu.Window(tmp_path, proc=tmp_path / "no-proc")
    window.start()
    window.stop()
    assert "/proc" in (window.use(10).unavailable or "")


TICKS = os.sysconf("SC_CLK_TCK")


def _fake_proc(root: Path, cpu_seconds: dict[int, float]) -> Path:
    proc = root / "proc"
    (proc / "self").mkdir(parents=True, exist_ok=True)
    (proc / "self" / "stat").write_text("1 (x) S 0 " + "0 " * 20)
    (proc / "stat").write_text("cpu  0 0 0 0 0 0 0 0 0 0\n")
    for pid, seconds in cpu_seconds.items():
        ticks = round(seconds * TICKS)
        (proc / str(pid)).mkdir(exist_ok=True)
        parent = 1 if pid == 100 else 100
        (proc / str(pid) / "stat").write_text(f"{pid} (p) S {parent} 0 0 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 1 0 1 0 0")
        (proc / str(pid) / "cmdline").write_bytes(b"prog\0arg\0")
    return proc


def test_a_window_over_a_fake_proc(tmp_path: Path) -> None:
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "route.pid").write_text("100")
    proc = _fake_proc(tmp_path, {100: 1.0, 101: 0.5})
    window = cpu.Window(tmp_path, proc=proc)
    window.start()
    _fake_proc(tmp_path, {100: 3.0, 101: 1.0})
    window.stop()
    _fake_proc(tmp_path, {100: 9.0, 101: 9.0})  # after the end: ignored
    window.stop()
    assert window.use(invoices=50).ms_per_invoice == {"route": 50.0, TOTAL: 50.0}


def _document(index: int) -> BenchDocument:
    return BenchDocument(index, Kind.UBL, f"{index}.xml", f"N{index}", Seller("S", "842109373"), True, b"x", b"x")


def _report(cpu_use: CpuUse | None, calibration: CpuUse | None = None) -> BenchReport:
    sent = [Sent(_document(i), start=0.0, acked=0.01, invoice_id=str(i)) for i in range(20)]
    pipeline = figures(sent, {str(i): (203, 1.0) for i in range(20)}, set(), 0.0, 0.5, Mode.OPEN, 1, 40.0)
    closed = Calibration(0.5, 80.0, "e2e_invoices_per_s", 40.0, pipeline, cpu=calibration) if calibration else None
    return BenchReport("run", pipeline, Baselines(), {"ubl": 20}, calibration=closed, cpu=cpu_use)


MEASURED = CpuUse(
    ms_per_invoice={"validate": 12.0, "postgres": 4.0, LOAD_GENERATOR: 3.0, OTHER: 1.0, TOTAL: 16.0},
    window_seconds=7.5,
    busy_share=0.8,
)


def test_json_holds_the_cpu_of_both_phases() -> None:
    closed = CpuUse(ms_per_invoice={"validate": 10.0, TOTAL: 10.0}, window_seconds=3.0)
    data = json.loads(json.dumps(_report(MEASURED, closed).as_json(), allow_nan=False))
    assert data["cpu_ms_per_invoice"]["validate"] == 12.0
    assert data["cpu_window_seconds"] == 7.5
    assert data["calibration"]["cpu_ms_per_invoice"] == {"validate": 10.0, TOTAL: 10.0}
    assert data["calibration"]["cpu_window_seconds"] == 3.0


def test_json_keeps_the_keys_when_not_measured() -> None:
    data = _report(CpuUse(unavailable="no stack pid file in .run/pids")).as_json()
    assert data["cpu_ms_per_invoice"] is None and data["cpu_window_seconds"] is None
    assert data["cpu_unavailable"] == "no stack pid file in .run/pids"
    assert _report(None).as_json()["cpu_ms_per_invoice"] is None


def test_rows_sort_the_stack_by_cost_then_total_then_the_rest() -> None:
    assert MEASURED.ms_per_invoice is not None
    rows = cpu_rows(MEASURED.ms_per_invoice, {"validate": 10.0, TOTAL: 10.0})
    assert [row[0] for row in rows] == ["validate", "postgres", "total (stack)", LOAD_GENERATOR, OTHER]
    assert rows[1] == ["postgres", "4.00", "-"]


def test_render_prints_the_table_or_the_reason() -> None:
    console = Console(record=True, width=120)
    render(_report(MEASURED), console)
    text = console.export_text()
    assert "CPU per invoice (ms), measured phase" in text
    assert "measured phase over 7.5 s, machine busy 80%" in text
    console = Console(record=True, width=120)
    render(_report(MEASURED, CpuUse(ms_per_invoice={TOTAL: 10.0}, window_seconds=3.0)), console)
    assert "measured phase over 7.5 s, machine busy 80%; calibration over 3.0 s" in console.export_text()
    console = Console(record=True, width=120)
    render(_report(CpuUse(unavailable="no /proc on this system")), console)
    assert "CPU per invoice not measured: no /proc on this system" in console.export_text()
