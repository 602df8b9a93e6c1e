"""docs/quickstart.md, run as a user types it, against a real libvirtd and QEMU.

Every shell block a user types on one host runs in order (tests/test_quickstart.py, user_commands),
with only what the doc says may change: the guest's name and `<memory>`, its `<hostdev>`s left
out (there is no VFIO here), and `make install`/`make uninstall` given PREFIX, BINDIR, SHAREDIR
and UNITDIR in a temporary tree; every `vfiotask` is the command `make install` put in BINDIR.
Where this VM differs from a host: the commands that need a GPU (`check`, `devices`, `bind`) read
the fixture host fixtures/sysfs/doctor; `systemctl restart libvirtd` restarts a private libvirtd
(no systemd here), and `systemctl enable` enables the units in that temporary tree
(`systemctl --root`).  What the user would see is checked after each step: the guest starts with
its RAM file populated ahead and mapped in 2 MiB pages, `vfiotask check --domain` finds nothing
to fix in the guest, and its destroy gives every page and file back; the uninstall block puts
qemu.conf, the mount, the hook and the install away.  Whatever happens, qemu.conf, the mount unit,
the mount, the hooks directory and the pools are put back afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import (
    FIXTURES,
    HUGEPAGES_SYSFS,
    REPO,
    holding_host_lock,
    pools_restored,
    real_state_dir_kept_as_found,
)
from tests.libvirt.conftest import (
    QEMU_CONF,
    RECOMMENDED_MOUNT,
    RECOMMENDED_UNIT,
    memory_backing_put_back,
    mounted,
    running_private_libvirt,
    skip_without_libvirt,
)
from tests.test_quickstart import blocks, user_commands

pytestmark = pytest.mark.libvirt

NAME = "vfiotask-qs-guest"
MiB = 1 << 20
GUEST_MIB = 256
MOUNT = RECOMMENDED_MOUNT
UNIT = RECOMMENDED_UNIT
HOOK = Path("/etc/libvirt/hooks/qemu.d/50-vfiotask")
POOL_2M = HUGEPAGES_SYSFS / "hugepages-2048kB/nr_hugepages"
JOURNAL = Path("/run/vfiotask/libvirt.json")
GUEST_TOPICS = ("preparation", "memory placement", "memlock", "hugepages", "memory", "prepared ahead")


def guest_xml() -> str:
    """The quick start's guest with what its text says is yours changed: name, memory, vCPUs, and
    no <hostdev> on a host without a GPU."""
    xml = blocks("xml")[0].replace("gpu-guest", NAME)
    xml = xml.replace("<memory unit='GiB'>16</memory>", f"<memory unit='MiB'>{GUEST_MIB}</memory>")
    xml = xml.replace("<vcpu placement='static'>8</vcpu>", "<vcpu placement='static'>1</vcpu>")
    return re.sub(r"\s*<hostdev .*?</hostdev>", "", xml, flags=re.S)


def _journal() -> dict[str, dict[str, object]]:
    data = json.loads(JOURNAL.read_text()) if JOURNAL.exists() else {}
    return {"guests": data.get("guests", {}), "staged": data.get("staged", {})}


def _kernel_page_sizes(pid: int, path: str) -> set[str]:
    sizes, inside = set(), False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if line[:1] not in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" or ":" not in line.split()[0]:
            inside = line.rstrip().endswith(path)
        elif inside and line.startswith("KernelPageSize:"):
            sizes.add(" ".join(line.split()[1:]))
    return sizes


def _virsh_xml() -> str:
    from vfiotask.integrations.bench.libvirtd import virsh

    return virsh("dumpxml", "--inactive", NAME).stdout


@pytest.mark.skipif(not shutil.which("make"), reason="needs make")
def test_the_quick_start_as_a_user_types_it(root_only_dir: Path) -> None:
    tmp_path = root_only_dir  # root installs its hook only from code no other user can change
    skip_without_libvirt()
    if mounted(MOUNT) or UNIT.exists():
        pytest.skip(f"{MOUNT} is already configured on this host")
    root = tmp_path / "root"
    dirs = {"PREFIX": tmp_path / "opt", "BINDIR": tmp_path / "bin", "SHAREDIR": tmp_path / "share",
            "UNITDIR": root / "etc/systemd/system"}
    command = dirs["BINDIR"] / "vfiotask"
    (tmp_path / "gpu-guest.xml").write_text(guest_xml())
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFIOTASK_")}
    env["VFIOTASK_LIB_DIR"] = str(tmp_path / "lib")  # setup's and tune's undo records, not /var/lib's
    seen: dict[str, object] = {}

    with holding_host_lock(), pools_restored(), real_state_dir_kept_as_found(), memory_backing_put_back(), \
            running_private_libvirt(guest_prefix=NAME, set_backing_dir=False, hugetlbfs=False,
                                    install_hook=False) as libvirtd:
        seen["pool"] = int(POOL_2M.read_text())
        seen["qemu.conf"] = QEMU_CONF.read_text()
        for words in user_commands():
            words = [NAME if word == "gpu-guest" else word.replace("@gpu-guest.", f"@{NAME}.") for word in words]
            step = " ".join(words)
            if words[0] == "systemctl" and words[1] == "restart":
                libvirtd.restart()
                continue
            if words[0] == "systemctl":
                argv = ["systemctl", f"--root={root}", *words[1:]]
            elif words[0] == "make":
                argv = ["make", "-C", str(REPO), *words[1:], *(f"{k}={v}" for k, v in dirs.items())]
            elif words[0] == "vfiotask":
                argv = [str(command), *words[1:]]
                if words[1] in ("devices", "bind") or words[1:] == ["check"]:  # a GPU: the fixture host
                    argv += ["--sysfs-root", str(FIXTURES / "sysfs" / "doctor" / "sys")]
            else:
                argv = words
            result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
            # check reports what it found by its exit status (no IOMMU here; the fixture's GPU is held),
            # and bind --dry-run refuses the fixture's held GPU: what they print is what matters
            says_by_status = words[0] == "vfiotask" and words[1] in ("check", "devices", "bind")
            assert result.returncode in ((0, 1, 4) if says_by_status else (0,)), (step, result.stderr)
            assert "Traceback" not in result.stderr, step
            after_step(step, result.stdout, dirs, root, seen)
    assert len(seen["checked"]) == 13, seen  # every step after_step knows ran and was checked


def after_step(step: str, out: str, dirs: dict[str, Path], root: Path, seen: dict[str, object]) -> None:
    """What the user would see after `step` (each step checked is noted in seen["checked"])."""
    from vfiotask.integrations.libvirt.domain import parse_domain

    checked = seen.setdefault("checked", [])
    assert isinstance(checked, list)
    if step.startswith("make install"):
        assert (dirs["BINDIR"] / "vfiotask").is_file()
    elif step == "vfiotask setup memory-backing":
        assert mounted(MOUNT) and f'memory_backing_dir = "{MOUNT}"' in QEMU_CONF.read_text()
    elif step == "vfiotask hook install":
        assert f"PYTHON='{dirs['PREFIX']}/bin/python" in HOOK.read_text()
    elif step == f"vfiotask tune --domain {NAME} --prepared":
        domain = parse_domain(_virsh_xml())
        assert domain.backing.file_backed and not domain.backing.uses_hugepages and domain.ours
    elif step == f"vfiotask prepin --domain {NAME}":
        (staged,) = _journal()["staged"][NAME]["files"]  # type: ignore[index]
        assert os.stat(staged["path"]).st_blocks * 512 == GUEST_MIB * MiB
        seen["staged"] = staged["path"]
    elif step == f"virsh start {NAME}":
        record = _journal()["guests"][NAME]
        (ram,) = record["files"]  # type: ignore[misc]
        assert ram["staged_from"] == seen["staged"] and ram["path"].startswith(f"{MOUNT}/libvirt/qemu/")
        assert os.stat(ram["path"]).st_blocks * 512 == GUEST_MIB * MiB
        assert record["at_start"]["allocated"][ram["path"]] == GUEST_MIB * MiB  # type: ignore[index]
        pid = int(Path(f"/run/libvirt/qemu/{NAME}.pid").read_text())
        assert _kernel_page_sizes(pid, ram["path"]) == {"2048 kB"}  # QEMU maps that file, in 2 MiB pages
        seen["ram"] = ram["path"]
    elif step == f"vfiotask check --domain {NAME}":
        lines = out.splitlines()
        guest = [line for line in lines if any(line[6:].startswith(f"{topic}:") for topic in GUEST_TOPICS)]
        assert {line[6:].split(":")[0] for line in guest} >= {"preparation", "memory", "prepared ahead"}, lines
        assert all(line.startswith("ok    ") for line in guest), guest  # nothing to fix in the guest
        assert f"ok    memory backing: memory_backing_dir {MOUNT} is hugetlbfs (2M pages)" in lines, lines
        hook = [line for line in lines if line[6:].startswith("hook:")]
        assert hook and all(line.startswith("ok    ") for line in hook), hook  # the installed hook, loaded
    elif step == f"virsh destroy {NAME}":
        assert _journal()["guests"] == {} and _journal()["staged"] == {} and not Path(str(seen["ram"])).exists()
        assert int(POOL_2M.read_text()) == seen["pool"]  # every page the guest had, given back
    elif step == f"vfiotask tune --domain {NAME} --prepared --undo":
        assert parse_domain(_virsh_xml()).backing.uses_hugepages
    elif step == "vfiotask setup memory-backing --undo":
        assert not mounted(MOUNT) and not UNIT.exists() and QEMU_CONF.read_text() == seen["qemu.conf"]
    elif step == "vfiotask hook uninstall":
        assert not HOOK.exists()
    elif step.startswith("systemctl enable"):
        wants = root / "etc/systemd/system/multi-user.target.wants"
        assert sorted(p.name for p in wants.iterdir()) == ["vfiotask-recover.service", f"vfiotask-stage@{NAME}.service"]
    elif step.startswith("make uninstall"):
        assert not dirs["PREFIX"].exists() and not (dirs["BINDIR"] / "vfiotask").exists()
        assert not any(dirs["UNITDIR"].glob("vfiotask-*.service"))
    else:
        return
    checked.append(step.split()[0] if step.startswith(("make", "systemctl")) else step)
