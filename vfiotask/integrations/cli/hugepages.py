"""`vfiotask hugepages reserve|release|status`: per-owner hugepage reservations from the shell."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from vfiotask.errors import HostStateError, NeedsRoot
from vfiotask.integrations.cli.output import EXIT_NOTHING, note, print_json, table
from vfiotask.integrations.progress import TerminalLine
from vfiotask.journalrecords import Entry, PoolGrowth
from vfiotask.units import format_size, parse_node, parse_size

MOST_OF_RAM = 0.5
"""A reservation above this share of the host's RAM is warned about: hugepages are taken from
everything else, page cache and other guests included, until they are released."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hugepages",
        help="reserve and release hugepages per owner",
        description="Grow hugepage pools for an owner (all nodes at once, nothing kept on a shortfall), "
        "give them back, or show the pools and who holds what.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser), required=True)

    reserve = actions.add_parser("reserve", help="add hugepages to the pools for an owner")
    reserve.add_argument("--size", required=True, help="bytes wanted, e.g. 4G (rounded up to whole pages)")
    reserve.add_argument("--page-size", help="2M or 1G (default: the kernel's default hugepage size)")
    reserve.add_argument("--node", metavar="N", help="NUMA node whose pool grows (default: the global pool)")
    reserve.add_argument("--owner", required=True, help="who holds the pages, e.g. the guest's name")
    reserve.add_argument("--mount", type=Path, metavar="DIR",
                         help="also mount a hugetlbfs of the page size on DIR (made if missing); release unmounts it")
    reserve.add_argument("--json", action="store_true", help="print the reservation as JSON")
    reserve.set_defaults(handler=run_reserve)

    release = actions.add_parser("release", help="give an owner's hugepages back")
    release.add_argument("--owner", required=True, help="the owner given to 'hugepages reserve'")
    release.add_argument("--json", action="store_true", help="print what was given back as JSON")
    release.set_defaults(handler=run_release)

    status = actions.add_parser("status", help="show the pools and the reservations")
    status.add_argument("--json", action="store_true", help="print the pools and reservations as JSON")
    status.set_defaults(handler=run_status)


def _describe(pages: int, page_size: int) -> str:
    return f"{pages} pages of {format_size(page_size)} ({format_size(pages * page_size)})"


def _require_root(verb: str) -> None:
    if os.geteuid() != 0:
        raise HostStateError(f"hugepages {verb} changes the host's pools and needs root",
                             hint=f"run 'sudo vfiotask hugepages {verb} ...'; 'vfiotask hugepages status' "
                             "shows the pools to any user")


def _pages_json(pages: dict[int | None, int]) -> list[dict[str, Any]]:
    return [{"node": node, "pages": count} for node, count in pages.items()]


def reservation_json(reservation: Any) -> dict[str, Any]:
    return {"owner": str(reservation.owner), "page_size_bytes": reservation.page_size,
            "pages": _pages_json(dict(reservation.pages)), "size_bytes": reservation.size}


def _warn_most_of_ram(size: int) -> None:
    from vfiotask.host.meminfo import meminfo

    try:
        info = meminfo()
    except OSError:
        return
    total, available = info.get("MemTotal", 0), info.get("MemAvailable", 0)
    if total and MOST_OF_RAM * total < size <= available:  # beyond what is available it is refused anyway
        note(f"warning: {format_size(size)} of hugepages is {size * 100 // total}% of this host's "
             f"{format_size(total)} of RAM: page cache and every other process get only the rest until "
             "'vfiotask hugepages release'")


def run_reserve(args: argparse.Namespace) -> int:
    from vfiotask.jobs.hugepages import HugepageReserver

    size = parse_size(args.size, what="--size")
    page_size = parse_size(args.page_size, what="--page-size") if args.page_size is not None else None
    node = parse_node(args.node, "--node") if args.node is not None else None
    _require_root("reserve")
    _warn_most_of_ram(size)
    line = TerminalLine(enabled=not args.quiet)
    try:
        reservation = HugepageReserver(progress=line.meter(f"hugepages for {args.owner}")).reserve(
            args.owner, {node: size}, page_size, mount=args.mount)
    finally:
        line.clear()
    if args.json:
        print_json({**reservation_json(reservation), "changed": not reservation.already_held,
                    "mount": str(args.mount) if args.mount else None})
        return 0 if not reservation.already_held else EXIT_NOTHING
    for node, pages in reservation.pages.items():
        where = "the global pool" if node is None else f"node {node}"
        verb = "already holds" if reservation.already_held else "reserved"
        print(f"{reservation.owner} {verb} {_describe(pages, reservation.page_size)} on {where}")
    if args.mount and not reservation.already_held:
        print(f"mounted a hugetlbfs of {format_size(reservation.page_size)} pages on {args.mount}")
    return 0 if not reservation.already_held else EXIT_NOTHING


def run_release(args: argparse.Namespace) -> int:
    from vfiotask.jobs.hugepages import HugepageReserver, owner_of

    _require_root("release")
    wanted = owner_of(args.owner)
    reserver = HugepageReserver()
    recovered = reserver.recover(lambda owner: owner == wanted)  # an interrupted reservation's growth
    done = reserver.release_report(wanted)
    if args.json:
        data: dict[str, Any] = {"owner": args.owner, "changed": done is not None or bool(recovered),
                                "recovered": recovered}
        if done is not None:
            data.update(reservation=reservation_json(done.held), freed_pages=done.freed_pages,
                        freed_bytes=done.freed_pages * done.held.page_size, kept_pages=done.kept_pages,
                        kept_by=[{"kind": h.what, "name": h.name, "size_bytes": h.bytes} for h in done.holders],
                        unmounted=done.unmounted)
        print_json(data)
        return 0 if done or recovered else EXIT_NOTHING
    for action in recovered:
        print(action)
    if done is None:
        if recovered:
            return 0
        print(f"{args.owner} holds no hugepages; nothing to release")
        return EXIT_NOTHING
    if done.unmounted:
        print(f"unmounted {done.unmounted}")
    size = done.held.page_size
    print(f"released {_describe(done.freed_pages, size)} held by {args.owner}")
    if done.kept_pages:
        holders = "; ".join(h.describe() for h in done.holders) or "nothing vfiotask can see (another user's process?)"
        print(f"{_describe(done.kept_pages, size)} stay in use as surplus pages until their holders let go: {holders}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from vfiotask.jobs.hugepages import HugepageReserver

    reserver = HugepageReserver()
    pools = reserver.pools_state()
    try:
        owners: list[Any] | None = reserver.owners()
        orphans: list[tuple[Entry, PoolGrowth]] = reserver.orphans()
    except NeedsRoot:  # the journal is root's: show the pools, say where the rest is
        owners, orphans = None, []
    if args.json:
        print_json({
            "pools": [{"page_size_bytes": p.page_size, "node": p.node, "total_pages": p.total,
                       "free_pages": p.free, "surplus_pages": p.surplus, "reserved_pages": p.reserved}
                      for p in pools],
            "owners": None if owners is None else [reservation_json(o) for o in owners],
            "interrupted": [_orphan_json(orphan) for orphan in orphans],
        })
        return 0
    print(table(["page size", "node", "total", "free", "surplus", "reserved"],
                [(format_size(p.page_size), "all" if p.node is None else p.node, p.total, p.free, p.surplus,
                  p.reserved) for p in pools]))
    if owners is None:
        print("reservations: only root can read them (sudo vfiotask hugepages status)")
    elif not owners and not orphans:
        print("no reservations")
    else:
        print()
        print(table(["owner", "size", "page size", "pages per node"],
                    [(o.owner, format_size(o.size), format_size(o.page_size),
                      ", ".join(f"{'all' if n is None else n}: {c}" for n, c in o.pages.items()))
                     for o in owners]))
    for interrupted in orphans:
        orphan = _orphan_json(interrupted)
        print(f"{orphan['owner']}: interrupted reservation, up to {orphan['pages']} pages of "
              f"{format_size(orphan['page_size'])} on {orphan['node']} (process {orphan['pid']} is gone); "
              f"'vfiotask hugepages release --owner {orphan['owner']}' or 'vfiotask recover' gives them back")
    return 0


def _orphan_json(orphan: tuple[Entry, PoolGrowth]) -> dict[str, Any]:
    entry, growth = orphan
    return {"owner": str(entry.owner), "page_size": growth.page_size,
            "node": "the global pool" if growth.node is None else f"node {growth.node}",
            "pages": growth.pages if growth.got is None else growth.got, "pid": entry.holder.pid}
