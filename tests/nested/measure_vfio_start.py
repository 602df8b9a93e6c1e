"""`vfiotask bench vfio-start` in the nested guest, in full: the table in docs/bench.md.

    python -m tests.nested.measure_vfio_start [--repeat 5] [--install guest|host] [--kernel type1|iommufd]

Boots the guest on Debian 12's own kernel (type1; fetched into build/nested/ when missing) or on
the 6.12 one `make test` boots, installs vfiotask there (by default `make install` run by the guest
itself, offline from the wheelhouse: the path a user without network takes; `--install host`
runs it here first, as `make test` does), starts libvirtd (tests/nested/guest_libvirt.py) and
runs the suite on the lone edu with 64 MiB of RAM, first with memory_backing_dir on hugetlbfs,
then on 4 KiB tmpfs (libvirtd reads it only at start, so the two are not interleaved with each
other; the variants of each are).  Prints both tables and writes the JSON to
build/nested/vfio-start.json.  Takes 30 to 60 minutes under TCG.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

EDU = "0000:00:10.0"
SIZE = "64M"
BACKINGS = ("hugetlbfs", "tmpfs")
RESULT = "vfio-start.json"


def inside(repeat: int) -> int:
    from tests.nested import guest_libvirt
    from tests.nested.guest_libvirt import VFIOTASK, host_env

    results: dict[str, object] = {}
    with guest_libvirt.lab(Path.cwd(), BACKINGS[0], guest_libvirt.install_mode()) as lab:
        for backing in BACKINGS:
            lab.start(backing)
            done = subprocess.run([VFIOTASK, "bench", "vfio-start", "--device", EDU, "--size", SIZE,
                                   "--repeat", str(repeat), "--json"], capture_output=True, text=True, env=host_env())
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            results[backing] = json.loads(done.stdout)
        results["setup_s"] = lab.timings
    (guest_libvirt.RESULTS / RESULT).write_text(json.dumps(results, indent=1))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--install", choices=("guest", "host"), default="guest")
    parser.add_argument("--kernel", choices=("type1", "iommufd"), default="type1")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        return inside(args.repeat)

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.nested import install
    from tests.nested.boot import run_script
    from tests.nested.kernels import BUILD, IOMMUFD, TYPE1, fetch_all
    from vfiotask.integrations.bench.vfio_start import render

    kernel = TYPE1 if args.kernel == "type1" else IOMMUFD
    for problem in fetch_all(("busybox", kernel.name, "wheelhouse")):
        print(problem, file=sys.stderr)
    why = install.wheelhouse_missing() or (None if kernel.present() else f"no {kernel.name} kernel")
    if why:
        print(why, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="vfiotask-vfio-start-") as work:
        workdir = Path(work)
        results = workdir / "results"
        results.mkdir()
        if args.install == "guest":
            install.copy_source(results / "src")
        else:
            install.install_archive(workdir, results / "install.tar")
        run = run_script(kernel, workdir,
                         f".venv/bin/python -m tests.nested.measure_vfio_start --inside --repeat {args.repeat}",
                         timeout=4 * 3600)
        found = results / RESULT
        if not found.is_file():
            print(run.tail(), file=sys.stderr)
            return 1
        data = json.loads(found.read_text())
    (BUILD / RESULT).write_text(json.dumps(data, indent=1))
    for backing in BACKINGS:
        print(render(data[backing]))
    print(f"set-up in the guest (s): {data['setup_s']}; JSON: {BUILD / RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
