"""`vfiotask prepin`: open a guest RAM region, prefault it in parallel, pin it, report.

A thin layer over the library: `open_region`, `prefault`, `pin`.  With no arguments it runs the
embedded default that `make run` shows: 1 GiB of memfd, pinned with mlock when the memlock
budget allows (otherwise it says why on stderr and shows the prefault alone).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfiotask.devices.discovery import SYSFS_ROOT_ENV
from vfiotask.engine import CpuPolicy, Engine, HelperKind
from vfiotask.engine.priority import LOWEST
from vfiotask.errors import MemlockLimitError
from vfiotask.host.cpus import host_engine
from vfiotask.jobs.pin import MlockBackend, PinBackend, Pinning, pin
from vfiotask.jobs.prefault import MIN_CHUNK, PrefaultReport, prefault
from vfiotask.memory.accountant import LockedMemoryAccountant
from vfiotask.memory.region import Region, RegionSpec, open_region
from vfiotask.units import MAX_THREADS, format_size, parse_address, parse_count, parse_node, parse_size

DEFAULT_SIZE = "1G"
DEFAULT_BACKING = "memfd"
PIN_MODES = ("auto", "none", "mlock", "vfio", "mock")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepin",
        help="prefault and pin guest RAM in parallel",
        description="Prefault a guest RAM region on every usable CPU, pin it, and report. "
        "With no arguments: 1 GiB memfd, pinned when the memlock limit allows.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default=DEFAULT_SIZE,
                        help="region size, e.g. 4G (binary K, M, G, T; default 1G; see docs/cli.md)")
    parser.add_argument(
        "--backing", default=DEFAULT_BACKING, metavar="anon|memfd|PATH",
        help="anonymous memory, a memfd (default), or a file on tmpfs or hugetlbfs",
    )
    parser.add_argument("--page-size", metavar="SIZE", help="hugetlb page size for a memfd (2M, 1G)")
    parser.add_argument("--node", metavar="N", help="bind the region to NUMA node N")
    parser.add_argument("--threads", default="auto", metavar="auto|N", help="most workers to use (default auto)")
    parser.add_argument(
        "--helpers", default="auto", choices=("auto", "thread", "process"),
        help="helper threads or processes for the prefault (default: threads)",
    )
    parser.add_argument(
        "--helper-nice", default=str(LOWEST), metavar="N",
        help="priority helpers start at (default 19, the lowest: yield to the host's other work)",
    )
    parser.add_argument("--min-chunk", metavar="SIZE", help=f"smallest chunk (default {format_size(MIN_CHUNK)})")
    parser.add_argument(
        "--pin", default="auto", choices=PIN_MODES,
        help="auto: mlock when the memlock budget allows; none; mlock; vfio or mock: DMA-map through a container",
    )
    parser.add_argument("--group", metavar="N", help="IOMMU group for --pin vfio/mock")
    parser.add_argument("--device", metavar="ADDR", help="PCI device for --pin vfio/mock (its group is used)")
    parser.add_argument(
        "--iova",
        default="0x100000000",
        metavar="BASE",
        help="IOVA the region is mapped at (default 4 GiB: above the x86 interrupt window, as QEMU maps high RAM)",
    )
    parser.add_argument(
        "--sysfs-root", type=Path, default=os.environ.get(SYSFS_ROOT_ENV) or None, metavar="DIR",
        help=f"sysfs tree to read devices from (env {SYSFS_ROOT_ENV})",
    )
    parser.add_argument("--domain", metavar="NAME", help="prepare the RAM of libvirt domain NAME instead")
    parser.add_argument("--force", action="store_true", help="allow a backing file on a disk filesystem")
    parser.add_argument("--hold", action="store_true", help="keep the pins until SIGTERM or SIGINT, then undo")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


@dataclass
class Options:
    """The command's arguments, checked."""

    spec: RegionSpec
    max_threads: int
    engine: Engine
    helpers: HelperKind | None
    min_chunk: int
    pin: str
    group: int | None
    iova: int


def parse_threads(text: str) -> int:
    """`auto` -> 0 (the engine decides), else a positive count."""
    return 0 if text == "auto" else parse_count(text, "--threads", maximum=MAX_THREADS)


def options(args: argparse.Namespace) -> Options:
    size = parse_size(args.size, what="--size")
    page_size = parse_size(args.page_size, what="--page-size") if args.page_size is not None else None
    node = parse_node(args.node, "--node") if args.node is not None else None
    helpers = None if args.helpers == "auto" else HelperKind(args.helpers)
    helper_nice = parse_count(args.helper_nice, "--helper-nice", minimum=-20, maximum=LOWEST)
    return Options(
        spec=RegionSpec(size=size, backing=args.backing, page_size=page_size, node=node, force=args.force),
        max_threads=parse_threads(args.threads),
        engine=host_engine(policy=CpuPolicy(helper_nice=helper_nice)),
        helpers=helpers,
        min_chunk=parse_size(args.min_chunk, what="--min-chunk") if args.min_chunk is not None else MIN_CHUNK,
        pin=args.pin,
        group=parse_count(args.group, "--group", minimum=0) if args.group is not None else None,
        iova=parse_address(args.iova, "--iova"),
    )


def _open_backend(args: argparse.Namespace, opts: Options) -> contextlib.AbstractContextManager[PinBackend]:
    if opts.pin in ("vfio", "mock"):
        module = importlib.import_module("vfiotask.jobs.vfio_pin")
        manager: contextlib.AbstractContextManager[PinBackend] = module.open_backend(
            opts.pin,
            group=opts.group,
            device=args.device,
            iova=opts.iova,
            sysfs_root=args.sysfs_root,
        )
        return manager
    return contextlib.nullcontext(MlockBackend())


def _decide_pin(mode: str, size: int, accountant: LockedMemoryAccountant) -> tuple[bool, str | None]:
    """Whether to pin, and why not when `auto` gives up; an explicit mode over budget raises."""
    if mode == "none":
        return False, None
    try:
        accountant.check(size, "the region")
    except MemlockLimitError as exc:
        if mode != "auto":
            raise
        return False, f"not pinning: {exc.one_line()}; showing the prefault alone"
    return True, None


def result(region: Region, report: PrefaultReport, pinning: Pinning | None, note: str | None,
           backend: str) -> dict[str, Any]:
    pin_seconds = pinning.report.seconds if pinning else 0.0
    seconds = report.seconds + pin_seconds
    return {
        "bytes": region.size,
        "backing": region.kind if region.path is None else str(region.path),
        "page_size": region.page_size,
        "threads": report.threads,
        "chunks": report.chunks,
        "helpers": report.helpers,
        "method": report.method,
        "prefault_seconds": round(report.seconds, 6),
        "pin": backend if pinning else "none",
        "pin_threads": pinning.report.threads if pinning else 0,
        "pin_chunks": pinning.report.chunks if pinning else 0,
        "pin_seconds": round(pin_seconds, 6),
        "seconds": round(seconds, 6),
        "gib_per_s": round(region.size / (1 << 30) / seconds, 3) if seconds > 0 else 0.0,
        "locked_bytes": pinning.locked_bytes if pinning else 0,
        "note": note,
        "plan": report.plan.to_dict(),
        "pin_plan": pinning.report.plan.to_dict() if pinning else None,
    }


def render_table(data: dict[str, Any]) -> str:
    headers = ["size", "page size", "threads", "chunks", "prefault s", "pin s", "GiB/s", "locked"]
    row = [
        format_size(data["bytes"]),
        format_size(data["page_size"]),
        f"{data['threads']} {data['helpers']}{'s' if data['threads'] != 1 else ''}",
        str(data["chunks"]),
        f"{data['prefault_seconds']:.3f}",
        f"{data['pin_seconds']:.3f}" if data["pin"] != "none" else "-",
        f"{data['gib_per_s']:.2f}",
        format_size(data["locked_bytes"]) + (f" ({data['pin']})" if data["pin"] != "none" else ""),
    ]
    widths = [max(len(h), len(c)) for h, c in zip(headers, row, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in (headers, row)]
    return "\n".join(lines)


HOLD_POLL_S = 0.2


def _hold() -> None:
    """Wait for SIGTERM (raised as Terminated by the command's handler) or SIGINT.

    Short sleeps rather than pause(): the kernel may deliver the signal to another thread of
    this process (an engine helper), which would leave pause() waiting; Python runs the handler
    in this thread as soon as a sleep ends.
    """
    while True:
        time.sleep(HOLD_POLL_S)


def run_domain(args: argparse.Namespace) -> int:
    """`prepin --domain NAME`: stage a stopped guest's RAM files for its next start."""
    from vfiotask.integrations.libvirt.ahead import stage_defined

    files, new = stage_defined(args.domain, threads=parse_threads(args.threads))
    name = args.domain
    data: dict[str, Any] = {
        "domain": name,
        "staged": new,
        "files": [{"path": f.path, "size": f.size, "node": f.node, "seconds": round(f.seconds, 6),
                   "threads": f.threads} for f in files],
    }
    if args.json:
        print(json.dumps(data, sort_keys=True))
        return 0
    verb = "populated" if new else "already staged"
    for f in files:
        took = f" in {f.seconds:.2f} s with {f.threads} thread(s)" if new else ""
        print(f"{name}: {verb} {f.path} ({format_size(f.size)}){took}")
    print(f"{name}: its next start moves {'it' if len(files) == 1 else 'them'} into place")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.domain:
        return run_domain(args)
    opts = options(args)
    with contextlib.ExitStack() as stack:
        region = open_region(opts.spec)
        stack.push(region.__exit__)  # on an error or signal the created file goes too
        accountant = LockedMemoryAccountant()
        do_pin, note = _decide_pin(opts.pin, region.size, accountant)
        if note:
            print(f"vfiotask: {note}", file=sys.stderr, flush=True)
        backend: PinBackend | None = stack.enter_context(_open_backend(args, opts)) if do_pin else None
        report = prefault(region, engine=opts.engine, max_threads=opts.max_threads, helpers=opts.helpers,
                          min_chunk=opts.min_chunk)
        pinning = None
        if backend is not None:
            pinning = pin(region, backend, accountant, engine=opts.engine, max_threads=opts.max_threads,
                          min_chunk=opts.min_chunk)
            stack.callback(pinning.release)
        data = result(region, report, pinning, note, backend.name if backend else "none")
        # With --hold, a signal from the moment the report is out is the expected end: release, exit 0.
        with contextlib.suppress(KeyboardInterrupt) if args.hold else contextlib.nullcontext():
            print(json.dumps(data, sort_keys=True) if args.json else render_table(data), flush=True)
            if args.hold:
                _hold()
    return 0
