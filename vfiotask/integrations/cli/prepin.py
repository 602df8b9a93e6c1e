"""`vfiotask prepin`: open a guest RAM region, prefault it in parallel, pin it, report.

A thin layer over the library: `open_region`, `prefault`, `pin`.  With no arguments it runs the
embedded default that `make run` shows: 1 GiB of memfd, pinned with mlock when the memlock
budget allows (otherwise it says why on stderr and shows the prefault alone).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfiotask.devices.discovery import SYSFS_ROOT_ENV, sysfs_root_from_env
from vfiotask.engine import CpuPolicy, Engine, HelperKind
from vfiotask.engine.priority import LOWEST
from vfiotask.errors import MemlockLimitError, UsageError
from vfiotask.host.cpus import host_engine
from vfiotask.integrations.cli.output import note, print_json, table
from vfiotask.integrations.progress import TerminalLine
from vfiotask.jobs.pin import MlockBackend, PinBackend, Pinning, pin
from vfiotask.jobs.pinjournal import pins_recorded
from vfiotask.jobs.prefault import MIN_CHUNK, PrefaultReport, prefault
from vfiotask.memory.accountant import LockedMemoryAccountant
from vfiotask.memory.region import Region, RegionSpec, open_region
from vfiotask.units import MAX_THREADS, format_size, parse_address, parse_count, parse_node, parse_size

log = logging.getLogger(__name__)

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
    parser.set_defaults(handler=run, defaults={a.dest: a.default for a in parser._actions})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default=DEFAULT_SIZE,
                        help="region size, e.g. 4G (binary K, M, G, T; default 1G; see docs/cli.md)")
    parser.add_argument(
        "--backing", default=DEFAULT_BACKING, metavar="anon|memfd|PATH",
        help="anonymous memory, a memfd (default), or a file on tmpfs or hugetlbfs",
    )
    parser.add_argument("--page-size", metavar="SIZE", help="hugetlb page size for a memfd (2M, 1G)")
    parser.add_argument("--node", metavar="N", help="bind the region to NUMA node N")
    parser.add_argument("--threads", metavar="auto|N",
                        help="most workers to use (default: max_threads in the config file, else auto)")
    parser.add_argument(
        "--helpers", default="auto", choices=("auto", "thread", "process"),
        help="helper threads or processes for the prefault (default: threads)",
    )
    parser.add_argument(
        "--helper-nice", metavar="N",
        help="priority helpers start at (default: helper_nice in the config file, else 19, the lowest: yield to "
        "the host's other work)",
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
        "--sysfs-root", type=Path, metavar="DIR",
        help=f"sysfs tree to read devices from (env {SYSFS_ROOT_ENV})",
    )
    parser.add_argument("--domain", metavar="NAME", help="prepare the RAM of libvirt domain NAME instead")
    parser.add_argument("--uri", metavar="URI", help="libvirt connection URI for --domain (default qemu:///system)")
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


DEVICE_OPTIONS = ("group", "device")
REGION_OPTIONS = ("size", "backing", "page_size", "node", "pin", "group", "device", "min_chunk", "hold", "force",
                  "helpers", "helper_nice", "iova")


def refuse_ignored(args: argparse.Namespace, parser_defaults: dict[str, Any]) -> None:
    """An option that does not apply to the mode asked for is refused, not silently ignored: a user
    who wrote --group 2 believes the region goes through that group's IOMMU."""
    def given(name: str) -> bool:
        return getattr(args, name, None) != parser_defaults.get(name)

    if args.domain:
        extra = [f"--{n.replace('_', '-')}" for n in REGION_OPTIONS if given(n)]
        if extra:
            raise UsageError(f"{', '.join(extra)} do not apply to prepin --domain (the guest's XML says what to "
                             "prepare)", hint="drop them, or prepare a region without --domain")
        return
    if args.pin not in ("vfio", "mock"):
        extra = [f"--{n}" for n in (*DEVICE_OPTIONS, "iova") if given(n)]
        if extra:
            raise UsageError(f"{', '.join(extra)} only apply to --pin vfio or --pin mock (now --pin {args.pin})",
                             hint="add --pin vfio (or mock), or drop them")
    elif args.group is not None and args.device is not None:
        raise UsageError("--group and --device both name the IOMMU group", hint="give one of them")


def effective_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The config file's defaults with this command's flags over them."""
    from vfiotask.config import effective

    threads = None if args.threads is None else parse_threads(args.threads)
    nice = None if args.helper_nice is None else parse_count(args.helper_nice, "--helper-nice", minimum=-20,
                                                              maximum=LOWEST)
    values = effective({"max_threads": threads, "helper_nice": nice})
    for value in values.values():
        log.info("%s = %s (%s)", value.key, value.value, value.source)
    return values


def options(args: argparse.Namespace) -> Options:
    size = parse_size(args.size, what="--size")
    page_size = parse_size(args.page_size, what="--page-size") if args.page_size is not None else None
    node = parse_node(args.node, "--node") if args.node is not None else None
    helpers = None if args.helpers == "auto" else HelperKind(args.helpers)
    settings = effective_settings(args)
    return Options(
        spec=RegionSpec(size=size, backing=args.backing, page_size=page_size, node=node, force=args.force),
        max_threads=settings["max_threads"].value,
        engine=host_engine(policy=CpuPolicy(helper_nice=settings["helper_nice"].value)),
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
            sysfs_root=sysfs_root_from_env(args.sysfs_root),
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
        "size_bytes": region.size,
        "backing": region.kind if region.path is None else str(region.path),
        "page_size_bytes": region.page_size,
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
        format_size(data["size_bytes"]),
        format_size(data["page_size_bytes"]),
        f"{data['threads']} {data['helpers']}{'s' if data['threads'] != 1 else ''}",
        str(data["chunks"]),
        f"{data['prefault_seconds']:.3f}",
        f"{data['pin_seconds']:.3f}" if data["pin"] != "none" else "-",
        f"{data['gib_per_s']:.2f}",
        format_size(data["locked_bytes"]) + (f" ({data['pin']})" if data["pin"] != "none" else ""),
    ]
    return table(headers, [row], numbers_right=False)


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

    line = TerminalLine(enabled=not args.quiet)
    try:
        files, new = stage_defined(args.domain, threads=0 if args.threads is None else parse_threads(args.threads),
                                   uri=args.uri, progress=line.meter)
    finally:
        line.clear()
    name = args.domain
    data: dict[str, Any] = {
        "domain": name,
        "staged": new,
        "changed": new,
        "files": [{"path": f.path, "size_bytes": f.size, "node": f.node, "seconds": round(f.seconds, 6),
                   "threads": f.threads} for f in files],
    }
    if args.json:
        print_json(data)
        return 0
    verb = "populated" if new else "already staged"
    for f in files:
        took = f" in {f.seconds:.2f} s with {f.threads} thread(s)" if new else ""
        print(f"{name}: {verb} {f.path} ({format_size(f.size)}){took}")
    print(f"{name}: its next start moves {'it' if len(files) == 1 else 'them'} into place")
    return 0


def run(args: argparse.Namespace) -> int:
    refuse_ignored(args, args.defaults)
    if args.domain:
        return run_domain(args)
    opts = options(args)
    with contextlib.ExitStack() as stack:
        region = open_region(opts.spec)
        stack.push(region.__exit__)  # on an error or signal the created file goes too
        accountant = LockedMemoryAccountant()
        do_pin, why_not = _decide_pin(opts.pin, region.size, accountant)
        if why_not:
            note(why_not)
        backend: PinBackend | None = stack.enter_context(_open_backend(args, opts)) if do_pin else None
        line = TerminalLine(enabled=not args.quiet)
        stack.callback(line.clear)
        report = prefault(region, engine=opts.engine, max_threads=opts.max_threads, helpers=opts.helpers,
                          min_chunk=opts.min_chunk, progress=line.meter("prefault"))
        pinning = None
        if backend is not None:
            stack.enter_context(pins_recorded(region.size, backend.name))
            pinning = pin(region, backend, accountant, engine=opts.engine, max_threads=opts.max_threads,
                          min_chunk=opts.min_chunk, progress=line.meter(f"pin ({backend.name})"))
            stack.callback(pinning.release)
        line.clear()
        data = result(region, report, pinning, why_not, backend.name if backend else "none")
        data["kept_files"] = ([{"path": str(region.path), "size_bytes": region.size}]
                              if region.created and region.path is not None else [])
        # With --hold, a signal from the moment the report is out is the expected end: release, exit 0.
        with contextlib.suppress(KeyboardInterrupt) if args.hold else contextlib.nullcontext():
            if args.json:
                print_json(data)
            else:
                print(render_table(data), flush=True)
            if data["kept_files"]:
                note(f"kept {region.path} ({format_size(region.size)}): the memory stays used until it is removed "
                     f"(rm {region.path})")
            if args.hold:
                held = f"{format_size(data['locked_bytes'])} pinned ({data['pin']})" if pinning else \
                    f"{format_size(region.size)} prefaulted"
                note(f"holding {held} in pid {os.getpid()}; release with Ctrl-C or kill {os.getpid()}")
                _hold()
    return 0
