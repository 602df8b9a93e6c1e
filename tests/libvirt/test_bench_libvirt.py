"""`vfiotask bench libvirt` at a small size: it runs every variant and puts the host back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import is_root, run_cli
from vfiotask.integrations.libvirt.hookinstall import HOOKS_DIR, hook_path

pytestmark = pytest.mark.libvirt
POOLS = sorted(Path("/sys/kernel/mm/hugepages").glob("hugepages-*/nr_hugepages"))


def test_bench_runs_every_variant_and_restores_the_host(host_lock: None) -> None:
    from vfiotask.integrations.bench.libvirtd import _running, missing_tools

    if not is_root() or missing_tools() or not Path("/dev/kvm").exists():
        pytest.skip("needs root, /dev/kvm, libvirtd and QEMU")
    if _running("libvirtd"):
        pytest.skip("libvirtd is already running")
    conf_before = Path("/etc/libvirt/qemu.conf").read_text()
    pools_before = {p: p.read_text() for p in POOLS}
    # hugetlbfs has every variant (the reference hook and the <hugepages/> guest too) and a pool to
    # put back; the tmpfs configurations run the same variants with another mount
    result = run_cli("bench", "libvirt", "--size", "256M", "--repeat", "1", "--backing", "hugetlbfs", "--json",
                     timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [config["config"] for config in data["configs"]] == ["hugetlbfs"]
    for config in data["configs"]:
        expected = {"lazy", "nohook", "hook", "ahead"}
        if config["config"] == "hugetlbfs":
            expected |= {"reference", "hugepages-nohook", "hugepages-hook"}
        assert set(config["variants"]) == expected
        assert all(len(v["seconds"]) == 1 for v in config["variants"].values())
        assert config["hook_populate"]["threads"]
        for kind in ("not ours", "prepared"):
            assert set(config["hook_phase_ms"][kind]) == {"prepare", "start", "started", "release", "start path"}
        assert not Path(config["memory_backing_dir"]).exists()
    assert pools_before == {p: p.read_text() for p in POOLS}
    assert Path("/etc/libvirt/qemu.conf").read_text() == conf_before
    assert not hook_path(HOOKS_DIR).exists()
    assert not _running("libvirtd")
    assert "vfiotask-bench" not in Path("/proc/mounts").read_text()


def test_a_guest_larger_than_the_host_is_refused_before_libvirtd_starts() -> None:
    result = run_cli("bench", "libvirt", "--size", "4096T", "--repeat", "1")
    assert result.returncode == 3 and result.stderr.startswith("vfiotask: a 4096.0 TiB guest does not fit")
    assert len(result.stderr.strip().splitlines()) == 1
