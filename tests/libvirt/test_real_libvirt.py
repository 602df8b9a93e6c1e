"""The hook under a real libvirtd and QEMU: guests started and stopped with `virsh`.

One private libvirtd serves the module (started after the hook is installed and qemu.conf
names a tmpfs memory_backing_dir); everything is put back afterwards, also on failure.
libvirtd runs the hook with only LC_ALL, PATH and HOME, so the hook's state is in /run/vfiotask,
its config is /etc/vfiotask/config.toml (written for the tests that turn fault injection on, and
put back), and fault injection reaches it through the guest's `<vfiotask:config fail=...>` metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HUGEPAGES_SYSFS, holding_host_lock, pools_restored, real_state_dir_kept_as_found
from tests.libvirt.conftest import running_private_libvirt, skip_without_libvirt
from tests.libvirt.xmls import guest_xml
from tests.support import FAULTS_ON, etc_config

pytestmark = pytest.mark.libvirt

PREFIX = "vfiotask-test-"
STATE = Path("/run/vfiotask")
POOL_2M = HUGEPAGES_SYSFS / "hugepages-2048kB/nr_hugepages"
MiB = 1 << 20


@pytest.fixture(scope="module")
def lab() -> Iterator[object]:
    skip_without_libvirt()
    # the hook under libvirtd uses the real state dir
    with holding_host_lock(), pools_restored(), real_state_dir_kept_as_found(), \
            running_private_libvirt(guest_prefix=PREFIX) as private:
        yield private


@pytest.fixture
def faults_on_host(lab: object) -> Iterator[object]:
    """The module's libvirtd, with fault injection on in /etc/vfiotask/config.toml for one test
    (`lab` holds the host lock, which every test that writes that file takes)."""
    with etc_config(FAULTS_ON):
        yield lab


def journal() -> dict[str, dict[str, object]]:
    path = STATE / "libvirt.json"
    return json.loads(path.read_text()) if path.exists() else {"guests": {}, "staged": {}}


def hugepage_owners() -> list[str]:
    path = STATE / "hugepages.json"
    return sorted(json.loads(path.read_text()).get("owners", {})) if path.exists() else []


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())


def mapped_inodes(pid: int, needle: str) -> set[int]:
    inodes = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and needle in fields[5]:
            inodes.add(int(fields[4]))
    return inodes


def run_guest(lab, name: str, xml: str):  # type: ignore[no-untyped-def]
    from vfiotask.integrations.bench.libvirtd import virsh

    lab.define(xml)
    return virsh("start", name, check=False)


def stop_guest(name: str) -> None:
    from vfiotask.integrations.bench.libvirtd import virsh

    virsh("destroy", name, check=False)
    virsh("undefine", name, check=False)


def test_file_backed_guest_ram_is_populated_before_qemu_starts(lab) -> None:  # type: ignore[no-untyped-def]
    name = PREFIX + "file"
    xml = guest_xml(name, 512, file_backed=True, immediate=True, config={"threads": "2"})
    started = run_guest(lab, name, xml)
    try:
        assert started.returncode == 0, started.stderr
        record = journal()["guests"][name]
        (path,) = [f["path"] for f in record["files"]]  # type: ignore[index, union-attr]
        assert path.endswith(f"/libvirt/qemu/{record['id']}-{name[:20]}/pc.ram")
        at_start = record["at_start"]
        assert at_start["allocated"][path] == 512 * MiB  # type: ignore[index]
        assert at_start["owner"] == [64055, 64055] or at_start["owner"][0] != 0  # type: ignore[index]
        assert mapped_inodes(qemu_pid(name), path) == {at_start["inodes"][path]}  # type: ignore[index]
    finally:
        stop_guest(name)
    assert name not in journal()["guests"]
    assert not Path(path).exists()


def test_hugepage_backed_guest_reserves_and_gives_back(lab) -> None:  # type: ignore[no-untyped-def]
    name = PREFIX + "huge"
    before = int(POOL_2M.read_text())
    started = run_guest(lab, name, guest_xml(name, 512, hugepages="2048", config={}))
    try:
        assert started.returncode == 0, started.stderr
        assert int(POOL_2M.read_text()) == before + 256
        assert hugepage_owners() == [f"libvirt:{name}:{2 * MiB}"]
    finally:
        stop_guest(name)
    assert int(POOL_2M.read_text()) == before
    assert hugepage_owners() == []


@pytest.mark.parametrize(
    ("suffix", "backing", "fail", "message"),
    [
        ("fpre", {"file_backed": True}, "prefault:1", "prefault: Input/output error"),
        ("fhuge", {"hugepages": "2048"}, "hugepages:1", "hugepage reservation failed"),
    ],
)
def test_forced_failure_aborts_the_start_and_leaves_the_host_as_before(  # type: ignore[no-untyped-def]
    faults_on_host, suffix: str, backing: dict[str, object], fail: str, message: str
) -> None:
    lab = faults_on_host
    name = PREFIX + suffix
    pool = int(POOL_2M.read_text())
    entries = sorted(os.listdir(lab.backing_dir))
    started = run_guest(lab, name, guest_xml(name, 512, config={"fail": fail}, **backing))  # type: ignore[arg-type]
    try:
        assert started.returncode != 0
        assert f"vfiotask: guest {name}: {message}" in started.stderr
        assert f"EIO], injected by fault_injection ({fail} from the guest's fail='{fail}')" in started.stderr
    finally:
        stop_guest(name)
    assert int(POOL_2M.read_text()) == pool
    assert name not in journal()["guests"] and hugepage_owners() == []
    qemu_dir = lab.backing_dir / "libvirt" / "qemu"
    assert not qemu_dir.exists() or not any(p.name.endswith(name[:20]) for p in qemu_dir.iterdir())
    assert sorted(os.listdir(lab.backing_dir)) == entries


def test_a_guest_asking_for_a_failure_does_not_start_where_fault_injection_is_off(  # type: ignore[no-untyped-def]
    lab,
) -> None:
    """No /etc/vfiotask/config.toml: fail= is refused before anything is made, in one line."""
    name = PREFIX + "foff"
    entries = sorted(os.listdir(lab.backing_dir))
    started = run_guest(lab, name, guest_xml(name, 512, file_backed=True, config={"fail": "prefault:1"}))
    try:
        assert started.returncode != 0
        assert (f"vfiotask: guest {name}: fail='prefault:1' in its <vfiotask:config> asks for an injected failure, "
                "but fault injection is off on this host (fault_injection is not true in "
                "/etc/vfiotask/config.toml); remove fail= from the guest's <vfiotask:config>, or set "
                "fault_injection = true there") in started.stderr
        assert "injected by" not in started.stderr
    finally:
        stop_guest(name)
    assert name not in journal()["guests"]
    assert sorted(os.listdir(lab.backing_dir)) == entries


def test_a_guest_that_is_not_ours_starts_untouched(lab) -> None:  # type: ignore[no-untyped-def]
    name = PREFIX + "plain"
    started = run_guest(lab, name, guest_xml(name, 512))
    try:
        assert started.returncode == 0, started.stderr
        assert name not in journal()["guests"]
    finally:
        stop_guest(name)


def test_prepin_domain_stages_and_the_start_moves_the_file_in(lab) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import run_cli

    name = PREFIX + "warm"
    lab.define(guest_xml(name, 512, file_backed=True, immediate=True, config={}))
    env = {k: v for k, v in os.environ.items() if k != "VFIOTASK_STATE_DIR"}
    try:
        staged = run_cli("prepin", "--domain", name, "--json", env=env)
        assert staged.returncode == 0, staged.stderr
        (file,) = json.loads(staged.stdout)["files"]
        assert Path(file["path"]).stat().st_blocks * 512 == 512 * MiB
        from vfiotask.integrations.bench.libvirtd import virsh

        started = virsh("start", name, check=False)
        assert started.returncode == 0, started.stderr
        record = journal()["guests"][name]
        (moved,) = record["files"]  # type: ignore[misc]
        assert moved["staged_from"] == file["path"] and not Path(file["path"]).exists()
        assert mapped_inodes(qemu_pid(name), moved["path"]) == {moved["inode"]}
        assert journal()["staged"] == {}
        running = run_cli("prepin", "--domain", name, env=env)
        assert running.returncode == 2 and "is running" in running.stderr
    finally:
        stop_guest(name)
    missing = run_cli("prepin", "--domain", PREFIX + "nope", env=env)
    assert missing.returncode == 2 and "no libvirt domain named" in missing.stderr


def test_tune_shows_the_diff_then_changes_the_persistent_definition(lab) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import run_cli
    from vfiotask.integrations.bench.libvirtd import virsh
    from vfiotask.integrations.libvirt.domain import parse_domain

    name = PREFIX + "tune"
    lab.define(guest_xml(name, 512, config={"threads": "2"}))
    try:
        dry = run_cli("tune", "--domain", name, "--threads", "2", "--file-backed", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert '+    <allocation mode="immediate" threads="2" />' in dry.stdout and "was not changed" in dry.stdout
        assert parse_domain(virsh("dumpxml", "--inactive", name).stdout).backing.allocation_mode is None

        done = run_cli("tune", "--domain", name, "--threads", "2", "--file-backed")
        assert done.returncode == 0, done.stderr
        domain = parse_domain(virsh("dumpxml", "--inactive", name).stdout)
        assert (domain.backing.allocation_mode, domain.backing.allocation_threads) == ("immediate", 2)
        assert domain.backing.file_backed and domain.config.present and domain.config.threads == 2
        again = run_cli("tune", "--domain", name, "--threads", "2", "--file-backed")
        assert "nothing to change" in again.stdout
    finally:
        stop_guest(name)


def test_check_reads_a_defined_guest_over_a_read_only_connection(lab) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import run_cli

    name = PREFIX + "doctor"
    lab.define(guest_xml(name, 512, file_backed=True, config={}))
    try:
        result = run_cli("check", "--domain", name)
        assert "Traceback" not in result.stderr and result.stderr == "", result.stderr
        lines = result.stdout.splitlines()
        failed = [text for text in lines if text.startswith("fail")]
        assert result.returncode in (0, 1, 4) and (result.returncode == 0) == (not failed)
        assert any(text.startswith("ok    memory: RAM 512.0 MiB") for text in lines), lines
        ahead = next(text for text in lines if " prepared ahead: " in text)
        assert f"file-backed in {lab.backing_dir}" in ahead
        hook = [text for text in lines if " hook: " in text]
        assert hook and not any("is not installed" in text for text in hook)
    finally:
        stop_guest(name)
    missing = run_cli("check", "--domain", PREFIX + "nope")
    assert missing.returncode == 2 and "no libvirt domain named" in missing.stderr
