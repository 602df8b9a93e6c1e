"""The engine overhead benchmark runs and reports what it measured (no time is asserted)."""

from __future__ import annotations

from pathlib import Path

from vfiotask.integrations.bench.common import BenchOptions
from vfiotask.integrations.bench.engine import CHUNKS, render, run


def test_the_overhead_benchmark_runs_1000_chunks_per_variant(state_dir: Path) -> None:
    result = run(BenchOptions(repeat=1))
    assert set(result["variants"]) == {"thread", "process"}
    for variant in result["variants"].values():
        assert variant["chunks"] == CHUNKS
        assert variant["threads"] >= 1
        assert variant["median_seconds"] > 0
    text = render(result)
    assert "engine overhead" in text and "thread" in text and "process" in text
