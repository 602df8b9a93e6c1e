"""`vfiotask hugepages reserve|release|status`: per-owner hugepage reservations from the shell."""

from __future__ import annotations

import argparse
import json

from vfiotask.units import format_size, parse_node, parse_size


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hugepages",
        help="reserve and release hugepages per owner",
        description="Grow hugepage pools for an owner (all nodes at once, nothing kept on a shortfall), "
        "give them back, or show the pools and who holds what.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True

    reserve = actions.add_parser("reserve", help="add hugepages to the pools for an owner")
    reserve.add_argument("--size", required=True, help="bytes wanted, e.g. 4G (rounded up to whole pages)")
    reserve.add_argument("--page-size", help="2M or 1G (default: the kernel's default hugepage size)")
    reserve.add_argument("--node", metavar="N", help="NUMA node whose pool grows (default: the global pool)")
    reserve.add_argument("--owner", required=True, help="who holds the pages, e.g. the guest's name")
    reserve.add_argument("--json", action="store_true", help="print the reservation as JSON")
    reserve.set_defaults(handler=run_reserve)

    release = actions.add_parser("release", help="give an owner's hugepages back")
    release.add_argument("--owner", required=True)
    release.add_argument("--json", action="store_true")
    release.set_defaults(handler=run_release)

    status = actions.add_parser("status", help="show the pools and the reservations")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=run_status)


def _describe(pages: int, page_size: int) -> str:
    return f"{pages} pages of {format_size(page_size)} ({format_size(pages * page_size)})"


def run_reserve(args: argparse.Namespace) -> int:
    from vfiotask.jobs.hugepages import HugepageReserver

    size = parse_size(args.size, what="--size")
    page_size = parse_size(args.page_size, what="--page-size") if args.page_size is not None else None
    node = parse_node(args.node, "--node") if args.node is not None else None
    reservation = HugepageReserver().reserve(args.owner, {node: size}, page_size)
    if args.json:
        print(json.dumps(reservation.to_json(), indent=1))
        return 0
    for node, pages in reservation.pages.items():
        where = "the global pool" if node is None else f"node {node}"
        verb = "already holds" if reservation.already_held else "reserved"
        print(f"{reservation.owner} {verb} {_describe(pages, reservation.page_size)} on {where}")
    return 0


def run_release(args: argparse.Namespace) -> int:
    from vfiotask.jobs.hugepages import HugepageReserver

    released = HugepageReserver().release(args.owner)
    if args.json:
        print(json.dumps({"owner": args.owner, "released": released.to_json() if released else None}, indent=1))
    elif released is None:
        print(f"{args.owner} holds no hugepages; nothing to release")
    else:
        print(f"released {_describe(sum(released.pages.values()), released.page_size)} held by {args.owner}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from vfiotask.jobs.hugepages import HugepageReserver

    reserver = HugepageReserver()
    pools = reserver.pools_state()
    owners = reserver.owners()
    if args.json:
        print(
            json.dumps(
                {
                    "pools": [
                        {
                            "page_size": p.page_size,
                            "node": p.node,
                            "total": p.total,
                            "free": p.free,
                            "surplus": p.surplus,
                            "reserved": p.reserved,
                        }
                        for p in pools
                    ],
                    "owners": [o.to_json() for o in owners],
                },
                indent=1,
            )
        )
        return 0
    print(f"{'pool':<10} {'node':<6} {'total':>7} {'free':>7} {'surplus':>8} {'reserved':>9}")
    for p in pools:
        node = "all" if p.node is None else str(p.node)
        print(f"{format_size(p.page_size):<10} {node:<6} {p.total:>7} {p.free:>7} {p.surplus:>8} {p.reserved:>9}")
    if not owners:
        print("no reservations")
    for owner in owners:
        spread = ", ".join(
            f"{'all' if node is None else f'node {node}'}: {count}" for node, count in owner.pages.items()
        )
        print(f"{owner.owner}: {format_size(owner.size)} in pages of {format_size(owner.page_size)} ({spread})")
    return 0
