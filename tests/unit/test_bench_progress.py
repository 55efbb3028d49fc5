"""The bench's progress display shows each step's rate, worked out when the
display renders rather than at every tick."""

from __future__ import annotations

from rich.progress import Progress

from invoicectl.bench.cli import _RateColumn, _step


def test_the_rate_column_shows_items_per_second_from_the_ticks() -> None:
    clock = [0.0]
    progress = Progress(_RateColumn(), get_time=lambda: clock[0], auto_refresh=False, disable=True)
    with _step(progress, "submitted", 100) as tick:
        task = progress.tasks[0]
        assert str(_RateColumn().render(task)) == ""  # no sample yet
        for _ in range(50):
            clock[0] += 0.02  # 50 per second
            tick()
        assert task.completed == 50
        assert str(_RateColumn().render(task)).strip() == "50.0/s"
