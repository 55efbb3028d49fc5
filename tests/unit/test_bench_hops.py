"""Pure parts of `invoicectl bench --rate auto` and of the per-hop latencies:
the rate chosen from a calibration run, hops from timestamps (some missing),
the percentile table and the JSON report."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
from rich.console import Console

from invoicectl.bench.calibration import choose_rate, parse_rate, split_count
from invoicectl.bench.generator import BenchDocument, Kind, Seller
from invoicectl.bench.hops import InvoiceTimes, earliest_by_key, hop_latencies, hop_seconds
from invoicectl.bench.report import HOPS, Baselines, BenchReport, Latency, PipelineFigures, hop_rows, render
from invoicectl.bench.runner import Mode, Sent, figures, invoice_times


def _document(index: int) -> BenchDocument:
    return BenchDocument(index, Kind.UBL, f"{index}.xml", f"N{index}", Seller("S", "842109373"), True, b"x", b"x")


def _closed_run(finals: dict[str, float]) -> PipelineFigures:
    sent = [Sent(_document(i), start=0.0, acked=0.01, invoice_id=key) for i, key in enumerate(finals)]
    return figures(
        sent,
        {key: (203, at) for key, at in finals.items()},
        set(),
        t0=0.0,
        submitted_at=0.5,
        mode=Mode.CLOSED,
        concurrency=4,
        per_second=0.0,
    )


# --- --rate and the calibration ------------------------------------------------------


def test_rate_is_a_number_or_auto() -> None:
    assert parse_rate("40") == 40.0
    assert parse_rate("12.5") == 12.5
    assert parse_rate("auto") is None
    assert parse_rate(" AUTO ") is None
    for bad in ("fast", "0", "-3", "nan", "inf", ""):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_count_is_split_between_calibration_and_open_loop() -> None:
    assert split_count(1800, 600) == (600, 1200)
    assert split_count(300, None) == (100, 200)  # a third by default
    assert split_count(9000, None) == (1000, 8000)  # at most 1000
    with pytest.raises(ValueError, match="at least 10"):
        split_count(20, None)
    with pytest.raises(ValueError, match="no invoice for the open loop"):
        split_count(500, 500)


def test_rate_is_the_fraction_of_the_whole_run_capacity() -> None:
    # 100 finals at 20/s from t=1: steady 20/s, but 100 over the whole run
    # (which starts at 0) is less; the whole run is what counts.
    run = _closed_run({str(i): 1.0 + i / 20 for i in range(100)})
    assert run.e2e_invoices_per_s_steady == pytest.approx(20.0, rel=0.02)
    assert 0 < run.e2e_invoices_per_s < run.e2e_invoices_per_s_steady
    chosen = choose_rate(run, 0.5)
    assert chosen.capacity_from == "e2e_invoices_per_s"
    assert chosen.capacity_invoices_per_s == run.e2e_invoices_per_s
    assert chosen.target_rate == pytest.approx(run.e2e_invoices_per_s * 0.5, abs=0.01)
    assert chosen.run is run


def test_a_tiny_rate_is_raised_to_the_smallest_the_open_loop_accepts() -> None:
    run = _closed_run({"a": 1.0, "b": 2.0})
    chosen = choose_rate(run, 0.25)
    assert chosen.capacity_invoices_per_s == 1.0
    assert chosen.target_rate == 0.25


def test_a_run_without_finals_gives_no_rate() -> None:
    with pytest.raises(ValueError, match="no capacity"):
        choose_rate(_closed_run({}), 0.5)
    with pytest.raises(ValueError, match="positive"):
        choose_rate(_closed_run({"a": 1.0}), 0.0)


# --- hops ------------------------------------------------------------------------------


def test_hops_of_a_routed_invoice() -> None:
    times = InvoiceTimes(
        submitted=100.0, status_200=100.05, received=100.06, validated=100.25, routed=100.3, final=100.4
    )
    hops = hop_seconds(times)
    assert list(hops) == list(HOPS)
    assert hops["submit_to_200"] == pytest.approx(0.05)
    assert hops["200_to_validated"] == pytest.approx(0.2)
    # ingest's outbox, then validate's stage: the two parts of the hop above.
    assert hops["200_to_received"] == pytest.approx(0.01)
    assert hops["received_to_validated"] == pytest.approx(0.19)
    assert hops["validated_to_routed"] == pytest.approx(0.05)
    assert hops["routed_to_final"] == pytest.approx(0.1)
    assert hops["total"] == pytest.approx(0.4)


def test_a_hop_needs_both_ends() -> None:
    # Rejected by validation: no routed record.
    rejected = hop_seconds(InvoiceTimes(submitted=0.0, status_200=0.1, validated=0.3, final=0.4))
    assert rejected["validated_to_routed"] is None and rejected["routed_to_final"] is None
    assert rejected["total"] == pytest.approx(0.4)
    # Topics not readable: only what the status topic says.
    unread = hop_seconds(InvoiceTimes(submitted=0.0, status_200=0.1, final=0.5))
    assert unread["submit_to_200"] == pytest.approx(0.1)
    assert unread["200_to_validated"] is None and unread["routed_to_final"] is None
    assert unread["200_to_received"] is None and unread["received_to_validated"] is None
    # Lost: nothing after the submission.
    assert set(hop_seconds(InvoiceTimes(submitted=0.0)).values()) == {None}


def test_hop_latencies_count_only_invoices_with_the_hop() -> None:
    invoices = [
        InvoiceTimes(submitted=0.0, status_200=0.01, validated=0.11, routed=0.12, final=0.22),
        InvoiceTimes(submitted=0.0, status_200=0.03, validated=0.33, final=0.43),
        InvoiceTimes(submitted=0.0),
    ]
    hops = hop_latencies(invoices)
    submit = hops["submit_to_200"]
    assert submit is not None and submit.count == 2 and submit.max == 30.0
    routed = hops["validated_to_routed"]
    assert routed is not None and routed.count == 1 and routed.p50 == 10.0
    total = hops["total"]
    assert total is not None and total.count == 2 and total.p50 == pytest.approx(325.0)
    assert hop_latencies([InvoiceTimes(submitted=0.0)]) == dict.fromkeys(HOPS)


def test_invoice_times_put_sent_times_on_the_wall_clock() -> None:
    sent = [
        Sent(_document(0), start=10.0, acked=10.1, invoice_id="a"),
        Sent(_document(1), start=10.5, error="UNAVAILABLE"),
    ]
    [a] = invoice_times(sent, 1000.0, {"a": 1010.02}, {"a": 1010.05}, {"a": 1010.2}, {}, {"a": 1010.3})
    assert a == InvoiceTimes(
        submitted=1010.0, status_200=1010.02, received=1010.05, validated=1010.2, routed=None, final=1010.3
    )


def test_the_earliest_record_of_each_wanted_key_wins() -> None:
    def record(key: bytes | None, ms: int) -> SimpleNamespace:
        return SimpleNamespace(key=key, timestamp=ms)

    records = [record(b"a", 2000), record(b"a", 1500), record(b"b", 1000), record(None, 10), record(b"other", 5)]
    assert earliest_by_key(records, {"a", "b"}) == {"a": 1.5, "b": 1.0}


# --- table and JSON ----------------------------------------------------------------------


def test_hop_table_keeps_pipeline_order_and_shows_missing_hops() -> None:
    latency = Latency.of_seconds([0.010, 0.020, 0.030])
    rows = hop_rows({"total": latency, "submit_to_200": latency, "validated_to_routed": None})
    assert [r[0] for r in rows] == [
        "submit -> 200",
        "200 -> validated",
        "  of which 200 -> received",
        "  and received -> validated",
        "validated -> routed",
        "routed -> final",
        "submit -> final",
    ]
    assert rows[0] == ("submit -> 200", "20.0", "29.0", "29.8", "30.0", "3")
    assert rows[4] == ("validated -> routed", "-", "-", "-", "-", "0")
    assert rows[1][5] == "0"  # absent from the mapping


def test_report_json_adds_calibration_and_hops_and_keeps_the_old_keys() -> None:
    closed = _closed_run({str(i): 1.0 + i / 20 for i in range(100)})
    calibration = choose_rate(closed, 0.5)
    sent = [Sent(_document(i), start=i / 10, acked=i / 10 + 0.01, invoice_id=f"o{i}") for i in range(20)]
    open_loop = figures(sent, {f"o{i}": (203, 1.0 + i / 10) for i in range(20)}, set(), 0.0, 2.0, Mode.OPEN, 32, 10.0)
    open_loop = replace(
        open_loop,
        hops_ms=hop_latencies([InvoiceTimes(submitted=0.0, status_200=0.01, final=0.5)]),
        hops_unavailable=["invoicing.invoice.routed.v1: TopicAuthorizationFailedError"],
    )
    report = BenchReport("run", open_loop, Baselines(), {"ubl": 20}, calibration=calibration)
    data = json.loads(json.dumps(report.as_json(), allow_nan=False))
    for key in ("e2e_invoices_per_s", "ack_latency_ms", "e2e_latency_ms", "lost", "baselines", "ratios", "mix"):
        assert key in data
    assert data["target_rate"] == 10.0
    assert data["hops_ms"]["submit_to_200"]["p50"] == 10.0
    assert data["hops_ms"]["validated_to_routed"] is None
    assert data["hops_unavailable"] == ["invoicing.invoice.routed.v1: TopicAuthorizationFailedError"]
    c = data["calibration"]
    assert c["fraction"] == 0.5 and c["capacity_from"] == "e2e_invoices_per_s"
    assert c["target_rate"] == calibration.target_rate
    assert c["run"]["mode"] == "closed" and c["run"]["count"] == 100
    assert set(c) >= {"submissions_over_target_rate", "e2e_steady_over_capacity"}


def test_report_json_without_auto_has_a_null_calibration() -> None:
    report = BenchReport("run", _closed_run({"a": 1.0}), Baselines(), {"ubl": 1})
    data = json.loads(json.dumps(report.as_json(), allow_nan=False))
    assert data["calibration"] is None
    assert data["hops_ms"] == {} and data["hops_unavailable"] == []


def test_console_report_shows_both_phases_and_the_hop_table() -> None:
    calibration = choose_rate(_closed_run({str(i): 1.0 + i / 20 for i in range(100)}), 0.5)
    open_loop = replace(
        _closed_run({"a": 1.0}),
        mode="open",
        target_rate=calibration.target_rate,
        hops_ms=hop_latencies([InvoiceTimes(submitted=0.0, status_200=0.01, validated=0.2, final=0.5)]),
        hops_unavailable=["invoicing.invoice.routed.v1: TopicAuthorizationFailedError"],
    )
    buffer = io.StringIO()
    render(
        BenchReport("run", open_loop, Baselines(), {"ubl": 1}, calibration=calibration), Console(file=buffer, width=200)
    )
    text = buffer.getvalue()
    for shown in ("calibration (closed loop)", "capacity invoices/s", "0.5 x capacity", "200 -> validated", "not read"):
        assert shown in text
