"""Guests that OpenStack Nova defines (tests/libvirt/nova.py), through the hook as libvirtd runs it.

Nova writes its own metadata, never `<vfiotask:config>`.  By default (`prepare_guests =
"metadata"`) the hook leaves such a guest alone, PCI devices or not; with `prepare_guests =
"file-backed-passthrough"` in config.toml it prepares every guest with a PCI hostdev and
file-backed RAM (Nova's `file_backed_memory`) with the settings of `[defaults]`.  There is no VFIO
here: the hostdev cases run the hook directly against the fixture sysfs trees; the real libvirtd
starts Nova-shaped guests without a hostdev.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    HUGEPAGES_SYSFS,
    holding_host_lock,
    pools_restored,
    real_state_dir_kept_as_found,
    requires_root,
    run_cli,
)
from tests.libvirt.conftest import (
    HOOK,
    HookHost,
    file_blocks,
    running_private_libvirt,
    skip_without_libvirt,
    stderr_line,
)
from tests.libvirt.nova import as_libvirt_runs_it, nova_instance_xml, pci_gpu

MiB = 1 << 20
SYSFS = Path(__file__).resolve().parents[2] / "fixtures" / "sysfs"
VIABLE = {"VFIOTASK_SYSFS_ROOT": str(SYSFS / "viable/sys")}
NAME = "instance-0000002a"
PASSTHROUGH = 'prepare_guests = "file-backed-passthrough"\n'


def nova_pci(domain_id: int = 7, **options: object) -> str:
    """Nova's PCI instance with file_backed_memory, as the hook gets it at start begin."""
    return as_libvirt_runs_it(nova_instance_xml(NAME, 64, hostdevs=pci_gpu(), **options), domain_id)  # type: ignore[arg-type]


def with_config(hook_host: HookHost, text: str) -> dict[str, str]:
    path = hook_host.conf.parent / "config.toml"
    path.write_text(text)
    return {**VIABLE, "VFIOTASK_CONFIG": str(path)}


def assert_left_alone(hook_host: HookHost, xml: str, **env: str) -> None:
    for phase, sub in (("prepare", "begin"), ("start", "begin"), ("release", "end")):
        result = hook_host.run(NAME, phase, sub, xml, **env)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b""), (phase, result.stderr)
    assert not (hook_host.backing_dir / "libvirt").exists()
    assert hook_host.journal()["guests"] == {}


def test_by_default_a_nova_pci_instance_is_left_alone(hook_host: HookHost) -> None:
    assert_left_alone(hook_host, nova_pci(), **VIABLE)
    assert_left_alone(hook_host, nova_pci(), **with_config(hook_host, 'prepare_guests = "metadata"\n'))


@requires_root
def test_file_backed_passthrough_prepares_it_hands_it_over_and_gives_it_back(hook_host: HookHost) -> None:
    env = with_config(hook_host, PASSTHROUGH + "[defaults]\nthreads = 1\n")
    xml = nova_pci()
    ram = hook_host.guest_dir(f"7-{NAME}") / "pc.ram"

    prepared = hook_host.run(NAME, "start", "begin", xml, **env)
    assert (prepared.returncode, prepared.stdout, prepared.stderr) == (0, b"", b"")
    assert ram.stat().st_size == 64 * MiB and file_blocks(ram) == 64 * MiB
    (record,) = hook_host.journal()["guests"].values()  # type: ignore[attr-defined]
    assert record["files"][0]["threads"] == 1  # [defaults] threads

    started = hook_host.run(NAME, "start", "begin", xml, **env)
    assert (started.returncode, started.stderr) == (0, b"")
    assert (ram.stat().st_uid, ram.stat().st_gid) == (64055, 64055)

    released = hook_host.run(NAME, "release", "end", xml.replace(" id='7'", ""), **env)
    assert (released.returncode, released.stderr) == (0, b"")
    assert not ram.exists() and hook_host.journal()["guests"] == {}


@requires_root
def test_defaults_prefault_off_checks_but_populates_nothing(hook_host: HookHost) -> None:
    env = with_config(hook_host, PASSTHROUGH + "[defaults]\nprefault = false\n")
    prepared = hook_host.run(NAME, "start", "begin", nova_pci(), **env)
    assert (prepared.returncode, prepared.stderr) == (0, b"")
    assert NAME in hook_host.journal()["guests"]  # type: ignore[operator]
    assert not hook_host.guest_dir(f"7-{NAME}").exists()
    assert hook_host.run(NAME, "release", "end", nova_pci(), **env).returncode == 0
    assert hook_host.journal()["guests"] == {}


def test_the_guests_own_metadata_wins_over_defaults(hook_host: HookHost) -> None:
    from vfiotask.integrations.libvirt.domain import NAMESPACE, SOURCE_METADATA, SOURCE_POLICY, parse_domain

    env = with_config(hook_host, PASSTHROUGH + "[defaults]\nthreads = 3\nprefault = false\ndevice-numa = false\n")
    tagged = nova_pci().replace("  </metadata>", f"    <vfiotask:config xmlns:vfiotask='{NAMESPACE}' "
                                "prefault='on'/>\n  </metadata>")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VFIOTASK_CONFIG", env["VFIOTASK_CONFIG"])
        by_policy, own = parse_domain(nova_pci()).config, parse_domain(tagged).config
    assert (by_policy.source, by_policy.threads, by_policy.prefault, by_policy.device_numa) == \
        (SOURCE_POLICY, 3, False, False)
    assert (own.source, own.threads, own.prefault, own.device_numa) == (SOURCE_METADATA, 3, True, False)


@pytest.mark.parametrize("shape", ["no hostdev", "hugepages", "anonymous RAM"])
def test_file_backed_passthrough_takes_only_pci_guests_with_file_backed_ram(hook_host: HookHost, shape: str) -> None:
    options: dict[str, object] = {
        "no hostdev": {},
        "hugepages": {"hostdevs": pci_gpu(), "file_backed": False, "hugepages_kib": 2048},
        "anonymous RAM": {"hostdevs": pci_gpu(), "file_backed": False},
    }[shape]
    xml = as_libvirt_runs_it(nova_instance_xml(NAME, 64, **options), 7)  # type: ignore[arg-type]
    assert_left_alone(hook_host, xml, **with_config(hook_host, PASSTHROUGH))


def test_config_toml_is_read_only_for_guests_it_can_make_ours(hook_host: HookHost) -> None:
    """A config.toml that cannot be parsed stops only the starts it decides: a Nova guest that no
    policy could take starts as before; a PCI guest with file-backed RAM gets one line naming the file."""
    env = with_config(hook_host, "prepare_guests = \n")
    plain = as_libvirt_runs_it(nova_instance_xml(NAME, 64), 7)
    assert_left_alone(hook_host, plain, **env)
    refused = hook_host.run(NAME, "start", "begin", nova_pci(), **env)
    assert refused.returncode == 1
    line = stderr_line(refused)
    assert f"config file {env['VFIOTASK_CONFIG']}: not valid TOML" in line
    assert hook_host.journal()["guests"] == {}


def imported_modules(hook_host: HookHost, xml: str, **env: str) -> set[str]:
    """What the hook imports at prepare begin, from python -X importtime."""
    result = subprocess.run([sys.executable, "-X", "importtime", str(HOOK), NAME, "start", "begin", "-"],
                            input=xml.encode(), capture_output=True, env=hook_host.env(**env), timeout=120)
    assert result.returncode == 0, result.stderr
    return {line.split("|")[-1].strip() for line in result.stderr.decode().splitlines()
            if line.startswith("import time:") and "|" in line}


def test_a_nova_guest_that_is_not_ours_costs_expat_only(hook_host: HookHost) -> None:
    """The fast path: no config file, no tomllib, no ElementTree, no domain model -- for a guest no
    policy can take, and for a PCI guest the default policy leaves alone (config read, nothing built)."""
    heavy = {"xml.etree.ElementTree", "vfiotask.integrations.libvirt.domain", "vfiotask.integrations.libvirt.phases"}
    env = with_config(hook_host, 'prepare_guests = "metadata"\n')
    plain = imported_modules(hook_host, as_libvirt_runs_it(nova_instance_xml(NAME, 64), 7), **env)
    assert "pyexpat" in plain and not plain & (heavy | {"vfiotask.config", "tomllib"})
    declined = imported_modules(hook_host, nova_pci(), **env)
    assert {"vfiotask.config", "tomllib"} <= declined and not declined & heavy


@pytest.mark.parametrize("policy", ["metadata", "file-backed-passthrough"])
def test_the_hooks_expat_scan_agrees_with_the_domain_model(policy: str, root_only_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from vfiotask.integrations.libvirt.domain import parse_domain
    from vfiotask.integrations.libvirt.ours import scan

    (root_only_dir / "config.toml").write_text(f'prepare_guests = "{policy}"\n')
    monkeypatch.setenv("VFIOTASK_CONFIG", str(root_only_dir / "config.toml"))
    shapes = [nova_pci(), as_libvirt_runs_it(nova_instance_xml(NAME, 64), 7),
              nova_instance_xml(NAME, 64, hostdevs=pci_gpu(), file_backed=False, hugepages_kib=2048),
              nova_instance_xml(NAME, 64, hostdevs=pci_gpu(), file_backed=False)]
    verdicts = [(scan(xml).ours, parse_domain(xml).ours) for xml in shapes]
    assert verdicts == [(policy != "metadata",) * 2, (False, False), (False, False), (False, False)]


@pytest.mark.parametrize(("policy", "line"), [
    ("metadata", "warn  preparation: no <vfiotask:config>: the hook leaves this guest alone"),
    ("file-backed-passthrough", "ok    preparation: by prepare_guests in config.toml (a PCI guest with file-backed "
     "RAM): threads 2, prefault on, hugepages on, device-numa on"),
])
def test_check_says_whether_the_hook_prepares_it(hook_host: HookHost, policy: str, line: str) -> None:
    env = with_config(hook_host, f'prepare_guests = "{policy}"\n[defaults]\nthreads = 2\n')
    path = hook_host.conf.parent / "instance.xml"
    path.write_text(nova_instance_xml(NAME, 64, hostdevs=pci_gpu()))
    env.pop("VFIOTASK_SYSFS_ROOT")
    result = run_cli("check", "--xml", str(path), "--sysfs-root", str(SYSFS / "doctor/sys"), env=env)
    assert result.stderr == "" and any(text.startswith(line) for text in result.stdout.splitlines())


def test_prepin_domain_refuses_a_guest_the_hook_would_leave_alone(hook_host: HookHost,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Staged files for such a guest would never be moved into place: memory held for nothing."""
    from vfiotask.errors import UsageError
    from vfiotask.integrations.libvirt.ahead import stage
    from vfiotask.integrations.libvirt.domain import parse_domain

    for key, value in with_config(hook_host, 'prepare_guests = "metadata"\n').items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VFIOTASK_STATE_DIR", str(hook_host.state))
    monkeypatch.setenv("VFIOTASK_LIBVIRT_QEMU_CONF", str(hook_host.conf))
    with pytest.raises(UsageError, match="is not one the hook prepares"):
        stage(parse_domain(nova_instance_xml(NAME, 64, hostdevs=pci_gpu())))
    assert not (hook_host.backing_dir / "libvirt").exists() and hook_host.journal()["staged"] == {}


# -- a real libvirtd -------------------------------------------------------------------------------

PREFIX = "instance-7f"
POOL_2M = HUGEPAGES_SYSFS / "hugepages-2048kB/nr_hugepages"


@pytest.fixture(scope="module")
def nova_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, Path]]:
    """A private libvirtd with the hook.  /etc/vfiotask/config.toml is left as it is: every
    vfiotask on this machine reads it, and a guest without a PCI device (all a start here can
    have) is decided by its metadata under either value of prepare_guests."""
    skip_without_libvirt()
    logs = tmp_path_factory.mktemp("nova-instances")
    with holding_host_lock(), pools_restored(), real_state_dir_kept_as_found(), \
            running_private_libvirt(guest_prefix=PREFIX) as private:
        yield private, logs


def _journal() -> dict[str, object]:
    path = Path("/run/vfiotask/libvirt.json")
    return json.loads(path.read_text()) if path.exists() else {}


def _qemu_ram_files(name: str) -> list[str]:
    pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
    return sorted({line.split()[5] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                   if len(line.split()) >= 6 and line.split()[5].endswith("/pc.ram")})


@pytest.mark.libvirt
def test_libvirt_starts_a_nova_instance_untouched(nova_lab) -> None:  # type: ignore[no-untyped-def]
    """Nova's own XML (its metadata, sysinfo, file-backed memory with discard) under a real libvirtd:
    the hook leaves it alone, and QEMU makes its RAM file itself."""
    from vfiotask.integrations.bench.libvirtd import virsh

    lab, logs = nova_lab
    name = PREFIX + "000001"
    lab.define(nova_instance_xml(name, 256, uuid="9b1c2f4e-5a3d-4c1e-8f0a-2d6e7b8c9a02",
                                 console_log=str(logs / f"{name}.log"), cpu_mode="none"))
    try:
        started = virsh("start", name, check=False)
        assert started.returncode == 0, started.stderr
        assert name not in _journal().get("guests", {})  # type: ignore[operator]
        (ram,) = _qemu_ram_files(name)
        assert ram.startswith(f"{lab.backing_dir}/libvirt/qemu/")
        metadata = virsh("metadata", name, "http://openstack.org/xmlns/libvirt/nova/1.1").stdout
        assert "<name>gpu-worker-1</name>" in metadata  # libvirt keeps Nova's metadata as written
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)


@pytest.mark.libvirt
def test_a_nova_instance_given_vfiotask_metadata_is_prepared(nova_lab) -> None:  # type: ignore[no-untyped-def]
    """`virsh metadata` adds <vfiotask:config/> beside Nova's: the hook populates its RAM file,
    QEMU maps that file, and the destroy gives everything back."""
    from vfiotask.integrations.bench.libvirtd import virsh
    from vfiotask.integrations.libvirt.domain import NAMESPACE

    lab, logs = nova_lab
    name = PREFIX + "000002"
    lab.define(nova_instance_xml(name, 256, uuid="9b1c2f4e-5a3d-4c1e-8f0a-2d6e7b8c9a03",
                                 console_log=str(logs / f"{name}.log"), cpu_mode="none"))
    pool = POOL_2M.read_text()
    made: dict[str, object] = {"path": "/nonexistent"}
    try:
        virsh("metadata", name, NAMESPACE, "--config", "--key", "vfiotask", "--set", "<config threads='1'/>")
        started = virsh("start", name, check=False)
        assert started.returncode == 0, started.stderr
        record = _journal()["guests"][name]  # type: ignore[index]
        (made,) = record["files"]
        assert made["threads"] == 1 and record["at_start"]["allocated"][made["path"]] == 256 * MiB
        assert Path(made["path"]).stat().st_blocks * 512 == 256 * MiB
        assert _qemu_ram_files(name) == [made["path"]]
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
    assert name not in _journal().get("guests", {})  # type: ignore[operator]
    assert not Path(str(made["path"])).exists() and POOL_2M.read_text() == pool
