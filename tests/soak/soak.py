"""Soak: start and stop a small file-backed guest N times under a real libvirtd with the hook.

    flock /tmp/vfiotask-host.lock .venv/bin/python -m tests.soak.soak --cycles 200 [--size-mib 64] [--json]

A private libvirtd is started with the hook installed and qemu.conf's memory_backing_dir on a
fresh tmpfs directory (everything put back on exit).  One warm-up cycle runs first: libvirtd
opens its log daemon connection and caches on the first start, which is not a leak.  Then the
baseline is taken, and after every cycle the host is compared with it: hugepage pools, the
entries of memory_backing_dir and of the state dir, the guests and reservations the journals
list, VmLck and the number of open descriptors of libvirtd.  Exit status 0 when every cycle
left nothing behind, 1 otherwise (the first difference is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.hoststate import HostSnapshot, snapshot
from tests.libvirt.xmls import guest_xml
from vfiotask.errors import UsageError
from vfiotask.host.procfs import status_bytes
from vfiotask.units import parse_count

PREFIX = "vfiotask-soak-"
STATE = Path("/run/vfiotask")  # libvirtd gives the hook no environment: it uses the real state dir


@dataclass(frozen=True)
class Sample:
    host: HostSnapshot
    libvirtd_fds: int
    libvirtd_vmlck: int


def sample(backing: Path, libvirtd: int) -> Sample:
    return Sample(snapshot(STATE, backing), len(os.listdir(f"/proc/{libvirtd}/fd")), status_bytes("VmLck", libvirtd))


def difference(first: Sample, second: Sample) -> dict[str, Any]:
    a, b = asdict(first), asdict(second)
    found = {key: (a[key], b[key]) for key in ("libvirtd_fds", "libvirtd_vmlck") if a[key] != b[key]}
    found.update({key: (value, b["host"][key]) for key, value in a["host"].items() if value != b["host"][key]})
    return found


def soak(cycles: int, size_mib: int) -> dict[str, Any]:
    """Run the cycles; the state dir goes again afterwards when the soak created it."""
    name = f"{PREFIX}guest"
    state_existed = STATE.exists()
    try:
        return _soak(name, cycles, size_mib)
    finally:
        if not state_existed:
            shutil.rmtree(STATE, ignore_errors=True)


def _soak(name: str, cycles: int, size_mib: int) -> dict[str, Any]:
    import libvirt

    from vfiotask.integrations.bench.libvirtd import URI, PrivateLibvirt

    with PrivateLibvirt(guest_prefix=PREFIX, hugetlbfs=False) as lab:
        libvirtd = lab.pids["libvirtd"]
        conn = libvirt.open(URI)
        try:
            domain = conn.defineXML(guest_xml(name, size_mib, file_backed=True, config={}))

            def cycle() -> None:
                domain.create()
                ram = list(lab.backing_dir.rglob("pc.ram"))
                if len(ram) != 1 or ram[0].stat().st_blocks * 512 != size_mib << 20:
                    raise AssertionError(f"the hook did not prepare the guest's RAM: {ram}")
                domain.destroy()

            cycle()
            baseline = sample(lab.backing_dir, libvirtd)
            clean, first_difference, fds = 0, None, []
            began = time.monotonic()
            for _ in range(cycles):
                cycle()
                now = sample(lab.backing_dir, libvirtd)
                fds.append(now.libvirtd_fds)
                changed = difference(baseline, now)
                if changed:
                    first_difference = first_difference or changed
                else:
                    clean += 1
            seconds = time.monotonic() - began
            final = sample(lab.backing_dir, libvirtd)
        finally:
            conn.close()
    return {
        "cycles": cycles,
        "clean_cycles": clean,
        "guest_mib": size_mib,
        "seconds": round(seconds, 3),
        "seconds_per_cycle": round(seconds / cycles, 3) if cycles else None,
        "libvirtd_fds": {"baseline": baseline.libvirtd_fds, "final": final.libvirtd_fds,
                         "min": min(fds, default=None), "max": max(fds, default=None)},
        "libvirtd_vmlck": {"baseline": baseline.libvirtd_vmlck, "final": final.libvirtd_vmlck},
        "pools": final.host.pools,
        "left_behind": difference(baseline, final),
        "first_difference": first_difference,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", default="200", help="start/stop cycles after the warm-up (default 200)")
    parser.add_argument("--size-mib", default="64", help="guest RAM in MiB (default 64)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        cycles = parse_count(args.cycles, "--cycles", minimum=0)
        size_mib = parse_count(args.size_mib, "--size-mib")
    except UsageError as exc:
        print(f"soak: {exc.one_line()}", file=sys.stderr)
        return exc.exit_status
    result = soak(cycles, size_mib)
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True, default=str))
    else:
        fds = result["libvirtd_fds"]
        print(f"{result['clean_cycles']} of {result['cycles']} cycles of a {result['guest_mib']} MiB guest left "
              f"nothing behind, {result['seconds_per_cycle']} s per cycle; libvirtd descriptors "
              f"{fds['baseline']} -> {fds['final']} (min {fds['min']}, max {fds['max']}); libvirtd VmLck "
              f"{result['libvirtd_vmlck']['baseline']} -> {result['libvirtd_vmlck']['final']}")
        if result["first_difference"]:
            print(f"first difference: {result['first_difference']}")
    return 0 if result["clean_cycles"] == result["cycles"] and not result["left_behind"] else 1


if __name__ == "__main__":
    sys.exit(main())
