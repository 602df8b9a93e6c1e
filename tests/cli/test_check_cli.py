"""`vfiotask check` as a user runs it: on the 'doctor' fixture host, on damaged copies, and on this host."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import run_cli
from tests.devices.helpers import FIXTURES

DOCTOR = FIXTURES / "doctor"
GUESTS = DOCTOR / "etc/libvirt/qemu"


def check(*args: str, root: Path = DOCTOR, state: Path | None = None) -> tuple[int, list[str], str]:
    env = {"VFIOTASK_STATE_DIR": str(state)} if state else None
    result = run_cli("check", "--sysfs-root", str(root / "sys"), *args, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout.splitlines(), result.stderr


def line(lines: list[str], start: str) -> str:
    found = [text for text in lines if text.startswith(start)]
    assert found, f"no line starting {start!r} in:\n" + "\n".join(lines)
    return found[0]


def test_host_part_names_the_four_kib_tmpfs_the_missing_hook_and_the_withheld_cpus(tmp_path: Path) -> None:
    status, lines, _ = check(state=tmp_path / "state")
    assert status == 0  # warnings only
    assert line(lines, "ok    iommu:").endswith("5 IOMMU groups (dmar0); kernel command line: intel_iommu=on iommu=pt")
    assert line(lines, "ok    interrupt remapping:")
    assert line(lines, "ok    module vfio-pci: loaded")
    memory = line(lines, "warn  memory backing:")
    assert "/dev/shm/vfiotask-guests is a 4 KiB tmpfs: huge=never" in memory
    assert "fix: mount -o remount,huge=within_size /dev/shm" in memory
    assert "is not installed" in line(lines, "warn  hook:")
    assert line(lines, "ok    hugepages 2.0 MiB node 1:").endswith(
        "0 in pool, 0 free; a reservation now would get about 4 more, up to 768 after compaction")
    cpus = line(lines, "ok    cpus:")
    assert "CPUs 0-3 (not 6-7: isolated; not 4-5: vCPUs of guest 1-other are pinned there)" in cpus
    assert "does not exist yet" in line(lines, "ok    state dir:")


def test_guest_part_names_the_held_gpu_the_short_node_and_the_memlock_budget(tmp_path: Path) -> None:
    status, lines, _ = check("--xml", str(GUESTS / "gpu-held.xml"), state=tmp_path / "state")
    assert status == 1
    held = line(lines, "fail  device 0000:01:00.0: held by")
    for who in ("Xorg (pid 1234): /dev/dri/card1 open",
                "gpu-monitor (pid 2345): /sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/resource0 mapped",
                "fbcon: vtcon1 draws the console on fb0", "efifb: boot framebuffer at 0xc0000000-0xc07fffff"):
        assert who in held
    assert "vfiotask kills nothing" in held
    assert "IOMMU group 2 is viable; driver amdgpu (managed" in line(lines, "ok    device 0000:01:00.0:")
    assert "vCPUs are pinned to CPUs 0-3" in line(lines, "warn  device 0000:01:00.0: on NUMA node 1")
    memlock = line(lines, "fail  memlock:")
    assert "VFIO pins 8.0 GiB, but QEMU's limit is 4.0 GiB" in memlock and "at least 9.0 GiB" in memlock
    short = line(lines, "fail  hugepages: needs 4096 x 2.0 MiB on node 1")
    assert "node 1 is short" in short and "free blocks by order 0-10: 60000 30000" in short


def test_guest_without_numatune_gets_its_devices_node_and_its_file_backing_judged(tmp_path: Path) -> None:
    status, lines, _ = check("--xml", str(GUESTS / "nic-guest.xml"), state=tmp_path / "state")
    assert status == 0
    assert line(lines, "ok    memory placement: node 0:").endswith("the node of 0000:02:00.0")
    assert "nothing holds it" in line(lines, "ok    device 0000:02:00.0: nothing")
    assert "node 0 has 16.5 GiB available" in line(lines, "ok    memory:")
    assert "populated ahead, but in 4 KiB pages" in line(lines, "warn  prepared ahead:")


def test_json_has_one_entry_per_finding_and_the_exit_status(tmp_path: Path) -> None:
    result = run_cli("check", "--json", "--sysfs-root", str(DOCTOR / "sys"), "--xml", str(GUESTS / "gpu-held.xml"),
                     env={"VFIOTASK_STATE_DIR": str(tmp_path / "state")})
    data = json.loads(result.stdout)
    assert result.returncode == data["exit_status"] == 1
    assert {f["level"] for f in data["findings"]} == {"ok", "warn", "fail"}
    memlock = next(f for f in data["findings"] if f["topic"] == "memlock")
    assert memlock["fix"].startswith("raise <memtune><hard_limit>") and memlock["fatal"] is False


def test_a_host_without_iommu_or_modules_exits_4(tmp_path: Path) -> None:
    root = tmp_path / "doctor"
    shutil.copytree(DOCTOR, root, symlinks=True)
    shutil.rmtree(root / "sys/kernel/iommu_groups")
    shutil.rmtree(root / "sys/module")
    (root / "proc/cmdline").write_text("root=/dev/sda1 nomodule\n")
    status, lines, _ = check(root=root, state=tmp_path / "state")
    assert status == 4
    assert line(lines, "fail  iommu: off")
    assert "this kernel loads no modules" in line(lines, "fail  module vfio-pci:")


def test_a_sysfs_root_that_is_no_sysfs_tree_is_refused(tmp_path: Path) -> None:
    """Not read as an empty host, nor (a missing /NAME has / for its parent) as this host."""
    for root in (tmp_path / "missing", Path("/no-such-vfiotask-tree")):
        result = run_cli("check", "--sysfs-root", str(root))
        assert result.returncode == 2 and result.stdout == "", result.stdout
        assert result.stderr == f"vfiotask: {root} is not a sysfs tree (no bus/pci/devices); give --sysfs-root a " \
            "directory laid out like /sys, e.g. fixtures/sysfs/viable/sys\n"


def test_unreadable_xml_is_one_line_and_exit_2(tmp_path: Path) -> None:
    status, _, err = check("--xml", str(tmp_path / "none.xml"))
    assert status == 2 and err.startswith("vfiotask: cannot read --xml") and err.count("\n") == 1


def test_check_changes_nothing_in_the_tree(tmp_path: Path) -> None:
    from tests.devices.helpers import snapshot

    root = tmp_path / "doctor"
    shutil.copytree(DOCTOR, root, symlinks=True)
    before = snapshot(root)
    check("--xml", str(GUESTS / "gpu-held.xml"), root=root, state=tmp_path / "state")
    assert snapshot(root) == before and not (tmp_path / "state").exists()


def test_on_this_host_it_runs_without_traceback() -> None:
    """The real host: whatever it finds, every line is a finding and the status says how bad."""
    result = run_cli("check")
    assert "Traceback" not in result.stderr and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(text.split()[0] in ("ok", "warn", "fail") for text in lines)
    failed = [text for text in lines if text.startswith("fail")]
    assert result.returncode in (0, 1, 4) and (result.returncode == 0) == (not failed)


def test_a_state_dir_others_may_write_fails(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    state.chmod(0o777)
    _, lines, _ = check(state=state)
    assert "has mode 0777; others could change what root undoes" in line(lines, "fail  state dir:")
    state.chmod(0o700)
    _, lines, _ = check(state=state)
    assert line(lines, "ok    state dir:").endswith("mode 0700")


def _with_hook(tmp_path: Path, text: str | None = None) -> Path:
    from vfiotask.integrations.libvirt.hookinstall import hook_text

    root = tmp_path / "doctor"
    shutil.copytree(DOCTOR, root, symlinks=True)
    hook = root / "etc/libvirt/hooks/qemu.d/50-vfiotask"
    hook.parent.mkdir(parents=True)
    hook.write_text(hook_text(str(Path(_installed_interpreter()))) if text is None else text)
    return root


def _installed_interpreter() -> str:
    """The interpreter the installed command runs under: the hook it would install names it."""
    from tests.conftest import vfiotask_command

    command = vfiotask_command()
    return command[0] if len(command) > 1 else Path(command[0]).read_text().partition("\n")[0][2:].strip()


def _libvirtd(root: Path, pid: int, ticks_after_boot: int) -> None:
    (root / f"proc/{pid}").mkdir()
    (root / f"proc/{pid}/comm").write_text("libvirtd\n")
    fields = ["S", *["0"] * 18, str(ticks_after_boot)]
    (root / f"proc/{pid}/stat").write_text(f"{pid} (libvirtd) {' '.join(fields)} 0 0\n")


def test_hook_current_and_no_libvirtd_is_ok(tmp_path: Path) -> None:
    root = _with_hook(tmp_path)
    _, lines, _ = check(root=root, state=tmp_path / "state")
    assert line(lines, "ok    hook:").endswith("is current, libvirtd is not running; it loads the hook when it starts")


def test_hook_written_after_libvirtd_started_asks_for_a_restart(tmp_path: Path) -> None:
    root = _with_hook(tmp_path)
    _libvirtd(root, 999, ticks_after_boot=100)  # started in 2023 by the fixture's btime
    _, lines, _ = check(root=root, state=tmp_path / "state")
    stale = line(lines, "warn  hook:")
    assert "libvirtd (pid 999) started before" in stale and stale.endswith("fix: systemctl restart libvirtd")


def test_hook_other_than_this_vfiotask_installs_is_a_warning(tmp_path: Path) -> None:
    root = _with_hook(tmp_path, "#!/opt/old/bin/python3\nold body\n")
    _, lines, _ = check(root=root, state=tmp_path / "state")
    assert "differs from what this vfiotask installs (/opt/old/bin/python3)" in line(lines, "warn  hook:")


def test_an_affinity_of_only_owned_cpus_is_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "doctor"
    shutil.copytree(DOCTOR, root, symlinks=True)
    (root / "proc/self/status").write_text("Name:\tvfiotask\nCpus_allowed_list:\t6-7\n")
    _, lines, _ = check(root=root, state=tmp_path / "state")
    assert "every CPU a prepare may use (6-7) is owned by others (not 6-7: isolated)" in line(lines, "warn  cpus:")
