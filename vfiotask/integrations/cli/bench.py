"""`vfiotask bench [SUITE]`: run a benchmark suite and print its table or JSON.

Suites are modules of `vfiotask.integrations.bench` with `run(...) -> dict` and
`render(dict) -> str`; the measuring rules they share are in `bench.common`.
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

SUITES = {
    "prefault": "prefault",
    "engine": "engine",
    "vfio": "vfio",
    "libvirt": "libvirt_start",
    "hugepages": "fragmentation",
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
                        "(default memfd,hugetlbfs)")
    parser.add_argument("--threads", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--repeat", type=_repeat, default=5, help="runs per variant (default 5)")
    parser.add_argument("--no-qemu", action="store_true", help="leave QEMU's preallocation out")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run)


def _repeat(text: str) -> int:
    """Checked here, once for every suite: a suite given 0 runs has no median to report."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count; give 5 or more for a median") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count} must be 1 or more; medians need 5 or more runs")
    return count


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"vfiotask.integrations.bench.{SUITES[args.suite]}")
    result: dict[str, Any] = module.run(args.repeat) if args.suite == "engine" else module.run(args)
    print(json.dumps(result, sort_keys=True) if args.json else module.render(result), flush=True)
    return 0
