"""`vfiotask bench --plot FILE.png`: the prefault suite's time and GiB/s against the thread count.

One row per backing: seconds (left) and GiB/s (right) for vfiotask's threads, bare threads, the
machine's parallel bound (N processes) and QEMU's prealloc-threads=N, all medians of the same
interleaved run.  matplotlib is an optional extra (`pip install 'vfiotask[plot]'`): it is imported
only here, and its absence is one line before any measuring starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vfiotask.errors import UsageError

SERIES = (
    ("vfiotask {n} thread{s}", "vfiotask (threads)", "o-"),
    ("bare {n} thread{s}", "bare threads", "s--"),
    ("bound {n} processes", "bound (N processes)", "^:"),
    ("qemu prealloc-threads={n}", "QEMU prealloc-threads=N", "x-."),
)


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed",
                         hint="pip install 'vfiotask[plot]' (or matplotlib), or leave out --plot") from None


def plot(result: dict[str, Any], path: Path) -> None:
    """Draw every backing of a prefault result into `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backings = result["backings"]
    figure, axes = plt.subplots(len(backings), 2, figsize=(10, 3.6 * len(backings)), squeeze=False)
    size_gib = result["size"] / (1 << 30)
    for row, entry in zip(axes, backings, strict=True):
        variants = entry["variants"]
        for template, label, style in SERIES:
            counts, seconds = [], []
            for n in result["threads"]:
                name = template.format(n=n, s="s" if n > 1 else "")
                if n == 1 and template.startswith("bound"):
                    name = "bare 1 thread"  # one process alone is its own bound
                if name in variants:
                    counts.append(n)
                    seconds.append(variants[name]["median_seconds"])
            if counts:
                row[0].plot(counts, seconds, style, label=label)
                row[1].plot(counts, [size_gib / s for s in seconds], style, label=label)
        for axis, what in zip(row, ("seconds (median)", "GiB/s"), strict=True):
            axis.set_xlabel("threads")
            axis.set_ylabel(what)
            axis.set_xticks(result["threads"])
            axis.grid(True, alpha=0.3)
        row[0].set_title(f"{entry['backing']}, {size_gib:g} GiB: time")
        row[1].set_title(f"{entry['backing']}, {size_gib:g} GiB: rate")
        row[1].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
