"""`vfiotask bench [SUITE]`: run a benchmark suite and print its table or JSON.

Suites are modules of `vfiotask.integrations.bench` with `run(BenchOptions) -> dict` and
`render(dict) -> str`; the options and the measuring rules they share are in `bench.common`.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vfiotask.integrations.cli.output import print_json
from vfiotask.units import MAX_THREADS, parse_count, parse_size

if TYPE_CHECKING:
    from vfiotask.integrations.bench.common import BenchOptions

MAX_THREAD_COUNTS = 64  # a list longer than this is no benchmark anyone runs

SUITES = {
    "prefault": "prefault",
    "engine": "engine",
    "vfio": "vfio",
    "libvirt": "libvirt_start",
    "concurrent": "concurrent",
    "hugepages": "fragmentation",
    "vfio-start": "vfio_start",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure vfiotask against 1 thread, the machine's parallel bound and QEMU",
        description="Interleaved runs on warm host memory, medians, ratios within one run (see docs/bench.md).",
    )
    parser.add_argument("suite", nargs="?", default="prefault", choices=sorted(SUITES), help="default: prefault")
    parser.add_argument("--size", help="memory per run (default 4G)")
    parser.add_argument("--backing", help="comma-separated: anon, memfd, hugetlbfs, or a tmpfs/hugetlbfs directory "
                        "(default memfd,hugetlbfs); for libvirt: tmpfs, tmpfs-huge, hugetlbfs (default all)")
    parser.add_argument("--threads", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--repeat", help="runs per variant (default 5; medians need 5 or more)")
    parser.add_argument("--no-qemu", action="store_true", help="leave QEMU's preallocation out")
    parser.add_argument("--device", metavar="ADDR", help="vfio-start: the PCI device its guests pass through")
    parser.add_argument("--uri", help="vfio-start: the libvirt on this host to start them with (default qemu:///system)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="prefault: also draw time and GiB/s against threads (needs vfiotask[plot])")
    parser.set_defaults(handler=run)


APPLIES = {
    "prefault": {"size", "backing", "threads", "repeat", "no_qemu"},
    "engine": {"repeat"},
    "vfio": {"size", "threads", "repeat"},
    "libvirt": {"size", "backing", "repeat"},
    "concurrent": {"size", "repeat"},
    "hugepages": {"size"},
    "vfio-start": {"size", "repeat", "device", "uri"},
}
"""The options each suite reads; one it does not read is refused rather than silently ignored."""


def options(args: argparse.Namespace) -> BenchOptions:
    """The options every suite takes, checked here once for all of them."""
    from vfiotask.errors import UsageError
    from vfiotask.integrations.bench.common import DEFAULT_REPEAT, BenchOptions

    given = [name for name in ("size", "backing", "threads", "repeat", "no_qemu", "device", "uri")
             if getattr(args, name)]
    ignored = [f"--{name.replace('_', '-')}" for name in given if name not in APPLIES[args.suite]]
    if ignored:
        raise UsageError(f"{', '.join(ignored)} do not apply to bench {args.suite}",
                         hint=f"it takes {', '.join('--' + n.replace('_', '-') for n in sorted(APPLIES[args.suite]))}")

    threads = None
    if args.threads is not None:
        items = args.threads.split(",", MAX_THREAD_COUNTS)
        threads = tuple(parse_count(item, "--threads", maximum=MAX_THREADS) for item in items)
    return BenchOptions(
        size=parse_size(args.size, what="--size") if args.size is not None else None,
        backing=args.backing,
        threads=threads,
        repeat=parse_count(args.repeat, "--repeat") if args.repeat is not None else DEFAULT_REPEAT,
        qemu=not args.no_qemu,
        device=args.device,
        uri=args.uri,
    )


def run(args: argparse.Namespace) -> int:
    from vfiotask.integrations.bench.common import reporting
    from vfiotask.integrations.progress import TerminalLine

    checked = options(args)
    plot = args.plot
    if plot is not None:
        from vfiotask.errors import UsageError
        from vfiotask.integrations.bench.plot import require_matplotlib

        if args.suite != "prefault":
            raise UsageError(f"--plot draws the prefault suite, not {args.suite}", hint="leave out --plot")
        require_matplotlib()
    module = importlib.import_module(f"vfiotask.integrations.bench.{SUITES[args.suite]}")
    line = TerminalLine(enabled=not args.quiet)
    meter = line.meter(f"bench {args.suite}")
    per_run = checked.size or 4 << 30
    runs = (lambda done, total: meter(done * per_run, total * per_run)) if meter else None
    try:
        with reporting(runs):
            result: dict[str, Any] = module.run(checked)
    finally:
        line.clear()
    if args.json:
        print_json(result)
    else:
        print(module.render(result), flush=True)
    if plot is not None:
        from vfiotask.integrations.bench.plot import plot as draw

        draw(result, plot)
    return 0
