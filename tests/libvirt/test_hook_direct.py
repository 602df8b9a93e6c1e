"""The hook run directly, as libvirtd runs it, against a private memory_backing_dir on tmpfs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import requires_root
from tests.libvirt.conftest import HookHost, file_blocks, stderr_line
from tests.libvirt.xmls import guest_xml
from tests.support import faults_on

MiB = 1 << 20
OURS = {"threads": "2"}
SYSFS = Path(__file__).resolve().parents[2] / "fixtures" / "sysfs"


def test_a_guest_that_is_not_ours_is_left_alone(hook_host: HookHost) -> None:
    xml = guest_xml("plain", 256, id=3, file_backed=True)
    for phase, sub in (("start", "begin"), ("start", "begin"), ("started", "begin"), ("release", "end")):
        result = hook_host.run("plain", phase, sub, xml)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert not (hook_host.backing_dir / "libvirt").exists()
    assert hook_host.journal().get("guests", {}) == {}


@requires_root
def test_start_populates_and_hands_over_release_removes(hook_host: HookHost) -> None:
    xml = guest_xml("g1", 64, id=7, file_backed=True, immediate=True, config=OURS, dac="+64055:+64055")
    guest = hook_host.guest_dir("7-g1")
    ram = guest / "pc.ram"

    prepared = hook_host.run("g1", "prepare", "begin", xml)  # no work before libvirt's own preparation
    assert (prepared.returncode, prepared.stdout, prepared.stderr) == (0, b"", b"")
    assert list(hook_host.backing_dir.iterdir()) == []

    started = hook_host.run("g1", "start", "begin", xml)
    assert (started.returncode, started.stdout, started.stderr) == (0, b"", b"")
    assert ram.stat().st_size == 64 * MiB and file_blocks(ram) == 64 * MiB
    assert (ram.stat().st_uid, ram.stat().st_gid, ram.stat().st_mode & 0o777) == (64055, 64055, 0o600)
    assert (guest.stat().st_uid, guest.stat().st_mode & 0o777) == (64055, 0o700)
    assert list((hook_host.backing_dir / ".vfiotask").iterdir()) == []  # nothing left in root's directory
    record = hook_host.journal()["guests"]["g1"]  # type: ignore[index]
    assert record["at_start"]["allocated"][str(ram)] == 64 * MiB

    for _ in range(2):  # idempotent
        released = hook_host.run("g1", "release", "end", xml.replace(" id='7'", ""))
        assert (released.returncode, released.stderr) == (0, b"")
    assert not ram.exists() and not guest.exists()
    assert list(hook_host.backing_dir.iterdir()) == []
    assert hook_host.journal()["guests"] == {}


@requires_root
def test_numa_cells_get_one_file_each(hook_host: HookHost) -> None:
    xml = guest_xml("numa", 64, id=8, file_backed=True, config=OURS, cells=[32, 32])
    assert hook_host.run("numa", "start", "begin", xml).returncode == 0
    files = sorted(p.name for p in hook_host.guest_dir("8-numa").iterdir())
    assert files == ["ram-node0", "ram-node1"]
    assert all(file_blocks(hook_host.guest_dir("8-numa") / f) == 32 * MiB for f in files)
    hook_host.run("numa", "release", "end", xml)
    assert not hook_host.guest_dir("8-numa").exists()


@requires_root
@pytest.mark.parametrize("fail", ["prefault:1", "prefault:2"])
def test_forced_failure_aborts_with_one_line_and_leaves_nothing(hook_host: HookHost, fail: str,
                                                                tmp_path: Path) -> None:
    xml = guest_xml("bad", 256, id=9, file_backed=True, config={"fail": fail})
    result = hook_host.run("bad", "start", "begin", xml, **faults_on(tmp_path))
    assert result.returncode == 1 and result.stdout == b""
    line = stderr_line(result)
    assert "guest bad" in line and "EIO], injected by fault_injection" in line
    assert list((hook_host.backing_dir).iterdir()) == []
    assert hook_host.journal()["guests"] == {}


def test_a_directory_with_files_in_the_guests_place_is_never_used(hook_host: HookHost) -> None:
    guest = hook_host.guest_dir("4-old")
    guest.mkdir(parents=True)
    (guest / "pc.ram").write_bytes(b"secret guest data")
    result = hook_host.run("old", "start", "begin", guest_xml("old", 64, id=4, file_backed=True, config=OURS))
    assert result.returncode == 1 and "holds files vfiotask did not make" in stderr_line(result)
    assert (guest / "pc.ram").read_bytes() == b"secret guest data"
    assert hook_host.run("old", "release", "end", guest_xml("old", 64, file_backed=True, config=OURS)).returncode == 0
    assert sorted(p.name for p in hook_host.backing_dir.iterdir()) == ["libvirt"]  # root's directory went


def test_the_empty_directory_libvirt_makes_is_replaced(hook_host: HookHost) -> None:
    guest = hook_host.guest_dir("4-new")
    guest.mkdir(parents=True, mode=0o700)
    made = guest.stat().st_ino
    result = hook_host.run("new", "start", "begin", guest_xml("new", 64, id=4, file_backed=True, config=OURS))
    assert (result.returncode, result.stderr) == (0, b"")
    assert guest.stat().st_ino != made and file_blocks(guest / "pc.ram") == 64 * MiB
    hook_host.run("new", "release", "end", guest_xml("new", 64, file_backed=True, config=OURS))
    assert not guest.exists()


@pytest.mark.parametrize(
    ("name", "phase", "xml", "needle"),
    [
        ("x", "start", "<domain><name>x</name>", "malformed"),
        ("x", "start", "", "is empty"),
        ("x", "start", None, "is empty"),
        ("x", "start", "<!DOCTYPE x><domain/>", "DOCTYPE"),
        ("x", "start", "<domain", "malformed"),
        ("a/b", "start", guest_xml("a/b", 64, id=1, config=OURS), "not usable"),
        ("..", "start", guest_xml("..", 64, id=1, config=OURS), "not usable"),
        ("caf\u00e9", "start", guest_xml("caf\u00e9", 64, id=1, config=OURS), "not usable"),
        ("y", "start", guest_xml("x", 64, id=1, config=OURS), "is for 'x'"),
        ("x", "start", guest_xml("x", 64, config=OURS), "no id"),
        ("x", "start", guest_xml("x", 64, id=1, config={"threads": "many"}), "threads 'many' is not a whole number"),
    ],
)
def test_bad_input_fails_prepare_with_one_line(hook_host: HookHost, name: str, phase: str,
                                               xml: str | None, needle: str) -> None:
    result = hook_host.run(name, phase, "begin", xml)
    assert result.returncode == 1 and result.stdout == b""
    assert needle in stderr_line(result)
    assert list(hook_host.backing_dir.iterdir()) == []


def test_other_phases_and_bad_names_never_fail_a_stop(hook_host: HookHost) -> None:
    assert hook_host.run("a/../b", "release", "end", "").returncode == 0
    assert hook_host.run("x", "teleport", "begin", "<junk").returncode == 0
    assert hook_host.run("x", "stopped", "end", "<junk").returncode == 0
    unicode_plain = guest_xml("caf\u00e9", 64, id=2)
    assert hook_host.run("caf\u00e9", "start", "begin", unicode_plain).returncode == 0


def test_missing_memory_backing_dir(hook_host: HookHost) -> None:
    hook_host.conf.write_text(f'memory_backing_dir = "{hook_host.backing_dir}/nope"\n')
    result = hook_host.run("m", "start", "begin", guest_xml("m", 64, id=1, file_backed=True, config=OURS))
    assert result.returncode == 1
    assert "memory_backing_dir" in stderr_line(result) and "does not exist" in stderr_line(result)
    assert hook_host.journal()["guests"] == {}


@requires_root
def test_missing_qemu_user_fails_start_and_release_cleans_up(hook_host: HookHost) -> None:
    xml = guest_xml("u", 64, id=5, file_backed=True, config=OURS, dac="nosuchuser-vt:nosuchgroup-vt")
    result = hook_host.run("u", "start", "begin", xml)
    assert result.returncode == 1 and "nosuchuser-vt" in stderr_line(result)
    assert list(hook_host.backing_dir.iterdir()) == []  # refused before anything was made
    assert hook_host.run("u", "release", "end", xml).returncode == 0
    assert hook_host.journal()["guests"] == {}


@requires_root
def test_start_never_follows_a_link_put_in_place(hook_host: HookHost, tmp_path: Path) -> None:
    xml = guest_xml("l", 64, id=6, file_backed=True, config=OURS, dac="+64055:+64055")
    assert hook_host.run("l", "start", "begin", xml).returncode == 0
    ram = hook_host.guest_dir("6-l") / "pc.ram"
    victim = tmp_path / "victim"
    victim.write_text("x")
    ram.unlink()
    os.symlink(victim, ram)
    result = hook_host.run("l", "start", "begin", xml)
    assert result.returncode == 1
    assert victim.stat().st_uid == 0
    hook_host.run("l", "release", "end", xml)
    assert victim.exists()


@requires_root
def test_memlock_budget_below_guest_ram_is_refused(hook_host: HookHost, tmp_path: Path) -> None:
    xml = guest_xml("pin", 512, id=2, hostdevs=["0000:01:00.0"], hard_limit_mib=256, config={})
    result = hook_host.run("pin", "start", "begin", xml, VFIOTASK_SYSFS_ROOT=str(SYSFS / "viable/sys"))
    assert result.returncode == 1
    line = stderr_line(result)
    assert "RLIMIT_MEMLOCK" in line and "hard_limit" in line
    assert hook_host.journal()["guests"] == {}


def test_hostdev_in_a_group_shared_with_a_host_driver_is_refused(hook_host: HookHost) -> None:
    xml = guest_xml("sib", 256, id=2, hostdevs=["0000:01:00.0"], config={})
    result = hook_host.run("sib", "start", "begin", xml, VFIOTASK_SYSFS_ROOT=str(SYSFS / "sibling/sys"))
    assert result.returncode == 1
    assert "0000:01:00.1" in stderr_line(result)
    assert hook_host.journal()["guests"] == {}


def test_viable_hostdev_passes_and_release_clears_it(hook_host: HookHost) -> None:
    xml = guest_xml("ok", 256, id=2, hostdevs=["0000:01:00.0", "0000:01:00.1"], config={})
    env = {"VFIOTASK_SYSFS_ROOT": str(SYSFS / "viable/sys")}
    result = hook_host.run("ok", "start", "begin", xml, **env)
    assert (result.returncode, result.stderr) == (0, b"")
    assert "ok" in hook_host.journal()["guests"]  # type: ignore[operator]
    placement = hook_host.journal()["guests"]["ok"]["placement"]  # type: ignore[index]
    assert placement == {"node": None, "reason": "the host has one NUMA node"}  # this VM: NUMA from the device is moot
    assert hook_host.run("ok", "release", "end", xml, **env).returncode == 0
    assert hook_host.journal()["guests"] == {}


@requires_root
def test_staged_files_are_moved_into_place_not_populated_again(hook_host: HookHost,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from vfiotask.integrations.libvirt.ahead import stage
    from vfiotask.integrations.libvirt.domain import parse_domain

    monkeypatch.setenv("VFIOTASK_STATE_DIR", str(hook_host.state))
    monkeypatch.setenv("VFIOTASK_LIBVIRT_QEMU_CONF", str(hook_host.conf))
    xml = guest_xml("warm", 64, id=11, file_backed=True, config=OURS)
    files, new = stage(parse_domain(xml.replace(" id='11'", "")))
    assert new and [file_blocks(Path(f.path)) for f in files] == [64 * MiB]
    assert stage(parse_domain(xml))[1] is False  # staging again is a no-op
    staged = Path(files[0].path)

    assert hook_host.run("warm", "start", "begin", xml).returncode == 0
    ram = hook_host.guest_dir("11-warm") / "pc.ram"
    assert ram.stat().st_ino == files[0].inode and not staged.exists() and not staged.parent.exists()
    record = hook_host.journal()
    assert record["staged"] == {} and record["guests"]["warm"]["files"][0]["staged_from"] == str(staged)  # type: ignore[index]
    hook_host.run("warm", "release", "end", xml)
    assert not ram.exists()


@requires_root
def test_a_failed_prepare_puts_staged_files_back(hook_host: HookHost, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    from vfiotask.integrations.libvirt.ahead import stage, unstage
    from vfiotask.integrations.libvirt.domain import parse_domain

    monkeypatch.setenv("VFIOTASK_STATE_DIR", str(hook_host.state))
    monkeypatch.setenv("VFIOTASK_LIBVIRT_QEMU_CONF", str(hook_host.conf))
    xml = guest_xml("warm2", 64, id=12, file_backed=True, config={"fail": "prefault:1"}, cells=[32, 32])
    files, _ = stage(parse_domain(xml.replace("fail", "x-fail")))
    # cell 0's staged file fits and is moved into place; cell 1 shrank, so its file is populated anew
    # and that fails: the moved file must go back to staging, untouched
    result = hook_host.run("warm2", "start", "begin", xml.replace("memory='32' unit='MiB'/></numa>",
                                                                    "memory='16' unit='MiB'/></numa>"),
                           **faults_on(tmp_path))
    assert result.returncode == 1 and "EIO" in stderr_line(result)
    assert all(Path(f.path).exists() for f in files)
    assert not hook_host.guest_dir("12-warm2").exists()
    unstage("warm2")
    assert not any(Path(f.path).exists() for f in files)


GIB_POOL = Path("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")


def _hugetlbfs_sizes() -> set[str]:
    sizes = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if " - hugetlbfs " in line:
            sizes.add("1G" if "pagesize=1024M" in line or "pagesize=1G" in line else "other")
    return sizes


def test_hugetlbfs_not_mounted_for_the_page_size(hook_host: HookHost) -> None:
    if not GIB_POOL.exists() or "1G" in _hugetlbfs_sizes():
        pytest.skip("needs a 1 GiB pool and no 1 GiB hugetlbfs mount")
    before = GIB_POOL.read_text()
    xml = guest_xml("h1", 1024, id=3, hugepages="1048576", config=OURS)
    result = hook_host.run("h1", "start", "begin", xml)
    assert result.returncode == 1
    line = stderr_line(result)
    assert "no hugetlbfs of that page size is mounted" in line and "restart libvirtd" in line
    assert GIB_POOL.read_text() == before


@requires_root
def test_a_pool_that_cannot_grow_fails_prepare_and_keeps_nothing(hook_host: HookHost, hugepage_pools: None,
                                                                 tmp_path: Path) -> None:
    import subprocess

    if not GIB_POOL.exists():
        pytest.skip("no 1 GiB hugepage pool")
    mount = tmp_path / "huge1g"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=1G", "none", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a 1 GiB hugetlbfs")
    try:
        before = GIB_POOL.read_text()
        xml = guest_xml("h2", 4 << 20, id=4, hugepages="1048576", config=OURS)  # 4 TiB of RAM
        result = hook_host.run("h2", "start", "begin", xml)
        assert result.returncode == 1
        line = stderr_line(result)
        assert "4096 hugepages of 1.0 GiB" in line and "no pool was changed" in line
        assert GIB_POOL.read_text() == before
        assert hook_host.journal()["guests"] == {}
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_the_hooks_fast_path_reads_the_hugepage_jobs_journal(state_dir: Path) -> None:
    from vfiotask.jobs.hugepages import HugepageReserver
    from vfiotask.journal import Journal
    from vfiotask.journalrecords import HugepagesContents

    assert Journal(HugepagesContents).path == HugepageReserver().journal.path == state_dir / "hugepages.json"


def test_release_of_a_guest_with_only_a_hugepage_reservation_left(hook_host: HookHost, tmp_path: Path) -> None:
    """A prepare killed before it wrote its guest record still has its pages given back at release."""
    import json

    hook_host.state.mkdir(mode=0o700, parents=True, exist_ok=True)
    (hook_host.state / "hugepages.json").write_text(json.dumps({"owners": {
        "libvirt:gone:2097152": {"page_size": 2097152, "pages": {}},
        "libvirt:other:2097152": {"page_size": 2097152, "pages": {}},
    }}))
    assert hook_host.run("gone", "release", "end", "").returncode == 0
    owners = json.loads((hook_host.state / "hugepages.json").read_text())["owners"]
    assert sorted(owners) == ["libvirt:other:2097152"]


@requires_root
def test_status_and_unstage_from_the_command_line(hook_host: HookHost, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import run_cli
    from vfiotask.integrations.libvirt.ahead import stage
    from vfiotask.integrations.libvirt.domain import parse_domain

    monkeypatch.setenv("VFIOTASK_STATE_DIR", str(hook_host.state))
    monkeypatch.setenv("VFIOTASK_LIBVIRT_QEMU_CONF", str(hook_host.conf))
    assert "holds nothing" in run_cli("hook", "status").stdout
    files, _ = stage(parse_domain(guest_xml("st", 32, file_backed=True, config=OURS)))
    status = run_cli("hook", "status").stdout.splitlines()
    assert status[0].split()[:3] == ["guest", "state", "files"] and status[1].split()[:5] == ["st", "staged", "1",
                                                                                            "32.0", "MiB"]
    shown = json.loads(run_cli("hook", "status", "--json").stdout)
    assert shown["staged"][0]["name"] == "st" and shown["staged"][0]["files"][0]["size_bytes"] == 32 << 20
    assert shown["staged"][0]["staged"].endswith("+00:00")  # ISO 8601, UTC
    assert "freed 32.0 MiB" in run_cli("hook", "unstage", "--domain", "st").stdout
    assert not Path(files[0].path).exists()
    assert "nothing is staged" in run_cli("hook", "unstage", "--domain", "st").stdout
    bad = run_cli("hook", "unstage", "--domain", "../x")
    assert bad.returncode == 2 and "not usable" in bad.stderr


def test_an_unexpected_error_still_reaches_libvirt_as_one_line(
    hook_host: HookHost, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from vfiotask.integrations.libvirt import hook, phases

    for key, value in hook_host.env().items():
        monkeypatch.setenv(key, value)

    def broken(*_args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(phases, "prepare", broken)
    xml = guest_xml("oops", 64, id=12, file_backed=True, config=OURS)
    status = hook.main(["hook", "oops", "start", "begin", "-"], stdin=io.BytesIO(xml.encode()))
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and "failed unexpectedly" in err and "a bug" in err and "Traceback" not in err


POOL_2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")


def _on_hugetlbfs(hook_host: HookHost, mount: Path) -> None:
    hook_host.conf.write_text(f'memory_backing_dir = "{mount}"\n')


@requires_root
def test_files_on_hugetlbfs_are_reserved_first_and_given_back(hook_host: HookHost, hugetlbfs_mount: Path) -> None:
    """The recommended configuration: the hook grows the pool for the guest, populates, releases."""
    _on_hugetlbfs(hook_host, hugetlbfs_mount)
    before = int(POOL_2M.read_text())
    xml = guest_xml("hg", 64, id=9, file_backed=True, config=OURS, dac="+0:+0")
    prepared = hook_host.run("hg", "start", "begin", xml)
    assert (prepared.returncode, prepared.stderr) == (0, b"")
    ram = hugetlbfs_mount / "libvirt" / "qemu" / "9-hg" / "pc.ram"
    assert int(POOL_2M.read_text()) == before + 32 and file_blocks(ram) == 64 * MiB
    assert hook_host.run("hg", "start", "begin", xml).returncode == 0
    assert hook_host.run("hg", "release", "end", xml).returncode == 0
    assert not ram.exists() and int(POOL_2M.read_text()) == before


@requires_root
def test_files_staged_on_hugetlbfs_keep_their_reservation_until_release(
        hook_host: HookHost, hugetlbfs_mount: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vfiotask.integrations.libvirt.ahead import stage, unstage
    from vfiotask.integrations.libvirt.domain import parse_domain

    _on_hugetlbfs(hook_host, hugetlbfs_mount)
    for key, value in hook_host.env().items():
        monkeypatch.setenv(key, value)
    before = int(POOL_2M.read_text())
    xml = guest_xml("hs", 64, id=10, file_backed=True, config=OURS, dac="+0:+0")
    stage(parse_domain(xml))
    assert int(POOL_2M.read_text()) == before + 32
    unstage("hs")
    assert int(POOL_2M.read_text()) == before
    stage(parse_domain(xml))
    assert hook_host.run("hs", "start", "begin", xml).returncode == 0
    assert int(POOL_2M.read_text()) == before + 32  # taken over, not grown again
    ram = hugetlbfs_mount / "libvirt" / "qemu" / "10-hs" / "pc.ram"
    assert file_blocks(ram) == 64 * MiB
    assert hook_host.run("hs", "release", "end", xml).returncode == 0
    assert not ram.exists() and int(POOL_2M.read_text()) == before


@requires_root
def test_a_hugetlbfs_pool_that_cannot_give_the_pages_refuses_the_start(
        hook_host: HookHost, hugetlbfs_mount: Path) -> None:
    _on_hugetlbfs(hook_host, hugetlbfs_mount)
    before = POOL_2M.read_text()
    xml = guest_xml("hx", 4 << 20, id=11, file_backed=True, config=OURS)  # 4 TiB
    result = hook_host.run("hx", "start", "begin", xml)
    assert result.returncode == 1
    line = stderr_line(result)
    assert "hugepages of 2.0 MiB" in line and "no pool was changed" in line
    assert POOL_2M.read_text() == before and not (hugetlbfs_mount / "libvirt" / "qemu" / "11-hx").exists()
    assert hook_host.journal()["guests"] == {}


@requires_root
def test_pages_already_free_in_the_pool_are_used_before_it_grows(hook_host: HookHost, hugetlbfs_mount: Path) -> None:
    """An administrator's boot-time pool is what the guest's files take first."""
    _on_hugetlbfs(hook_host, hugetlbfs_mount)
    standing = int(POOL_2M.read_text()) + 32
    POOL_2M.write_text(str(standing))
    if int(POOL_2M.read_text()) != standing:
        pytest.skip("the 2 MiB pool cannot grow by 32 pages here")
    xml = guest_xml("hf", 96, id=12, file_backed=True, config=OURS)
    assert hook_host.run("hf", "start", "begin", xml).returncode == 0
    assert int(POOL_2M.read_text()) == standing + 16  # 48 pages needed, 32 were free
    assert hook_host.run("hf", "release", "end", xml).returncode == 0
    assert int(POOL_2M.read_text()) == standing
