"""docs/quickstart.md stays true: its commands that need no GPU run (against fixture trees and a
private state dir), its guest XML and config file are accepted, and its troubleshooting table
has a line for every message the hook can print."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.devices.helpers import copy_tree, snapshot

QUICKSTART = REPO / "docs" / "quickstart.md"
HOOK_MODULES = ["hook", "ours", "phases", "domain", "paths", "ramfiles", "xmlsafe", "placement", "guestjournal"]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", QUICKSTART.read_text(), flags=re.S)


def user_commands() -> list[list[str]]:
    """Every command of the shell blocks a user types on a single host, in order (the Fleets
    section's are a compute node's: tests/libvirt/test_nova.py), without their comments."""
    import shlex

    text = QUICKSTART.read_text().split("## Fleets", 1)[0]
    found = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [words for block in found for words in map(lambda line: shlex.split(line, comments=True),
                                                       block.splitlines()) if words]


def hook_messages() -> list[str]:
    """The fixed text of every line the hook prints: its own fail(...) calls and the errors the
    code it runs raises (their longest literal part)."""
    found = []
    for module in HOOK_MODULES:
        tree = ast.parse((REPO / "vfiotask/integrations/libvirt" / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if not ((module == "hook" and name == "fail") or (name.endswith("Error") and name != "OSError")):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                parts = [first.value]
            elif isinstance(first, ast.JoinedStr):
                parts = [v.value for v in first.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
            else:
                continue
            text = max(parts, key=len).strip(" :;(),").strip()
            if len(text) >= 8:
                found.append(text)
    return found


def test_every_hook_message_is_in_the_troubleshooting_table() -> None:
    table = QUICKSTART.read_text().split("## Troubleshooting", 1)[1].split("## Fleets", 1)[0]
    messages = hook_messages()
    assert len(messages) > 20
    assert [m for m in messages if m not in table] == []
    assert "asks for vfiotask" in table  # the shim's own line, when vfiotask is gone


def test_the_guest_xml_is_ours_and_tune_prepared_moves_it_to_a_file() -> None:
    from vfiotask.integrations.libvirt.domain import parse_domain
    from vfiotask.integrations.libvirt.tune import prepared

    xml = blocks("xml")[0]
    domain = parse_domain(xml.encode())
    assert domain.ours and domain.name == "gpu-guest" and len(domain.hostdevs) == 2
    assert domain.page_size_for(None) == 2 << 20  # what setup memory-backing mounts by default
    _, after = prepared(xml, 2 << 20)
    tuned = parse_domain(after)
    assert tuned.backing.file_backed and not tuned.backing.uses_hugepages and tuned.ours


@pytest.mark.parametrize("index", [0, 1])
def test_the_config_files_are_accepted(root_only_dir: Path, index: int) -> None:
    """The host's config.toml of the quick start, and a Nova compute node's of its Fleets section."""
    path = root_only_dir / "config.toml"
    path.write_text(blocks("toml")[index])
    result = run_cli("config", "show", "--json", env={"VFIOTASK_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    from_file = {s["key"] for s in json.loads(result.stdout)["settings"] if s["source"] == "file"}
    assert "prepare_guests" in from_file and ("max_threads" in from_file) == (index == 0)


def test_the_config_file_in_docs_libvirt_is_accepted(root_only_dir: Path) -> None:
    path = root_only_dir / "config.toml"
    text = (REPO / "docs" / "libvirt.md").read_text()
    path.write_text(re.findall(r"```toml\n(.*?)```", text, flags=re.S)[0])
    result = run_cli("config", "show", "--json", env={"VFIOTASK_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr


def test_the_commands_that_need_no_gpu(tmp_path: Path, state_dir: Path) -> None:
    """check, devices, bind --dry-run, hook install, hook status, hook uninstall, as the quick start
    runs them, on a fixture host with a GPU on amdgpu.  The whole quick start, with libvirtd and
    without the GPU, runs in tests/libvirt/test_quickstart_libvirt.py."""
    commands = user_commands()
    assert [c[0] if c[0] != "vfiotask" else c[1] for c in commands] == [
        "make", "check", "devices", "bind", "setup", "hook", "systemctl", "virsh", "tune", "prepin", "virsh", "hook",
        "check", "systemctl", "virsh", "tune", "setup", "hook", "systemctl", "make"]
    root = copy_tree("doctor", tmp_path)
    before = snapshot(root.parent)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    fixture = ["--sysfs-root", str(root)]
    for command in commands:
        if command[0] != "vfiotask" or command[1] not in ("check", "devices", "bind", "hook") or "--domain" in command:
            continue  # needs libvirtd or changes the host: the libvirt test runs them
        args = command[1:] + (fixture if command[1] != "hook" else [])
        if command[1:3] in (["hook", "install"], ["hook", "uninstall"]):
            args += ["--hooks-dir", str(hooks)]
        result = run_cli(*args)
        assert result.returncode in (0, 1, 4), (args, result.stderr)  # check reports failures by exit status
        assert "Traceback" not in result.stderr, args
        assert result.stdout or (result.stderr.startswith("vfiotask: ") and len(result.stderr.splitlines()) == 1)
    assert not (hooks / "qemu.d" / "50-vfiotask").exists()  # installed, then uninstalled
    assert snapshot(root.parent) == before  # --dry-run and check changed nothing


def test_make_install_and_uninstall_are_in_the_makefile() -> None:
    if subprocess.run(["make", "-n", "-C", str(REPO), "install", "uninstall"], capture_output=True).returncode:
        pytest.fail("make install/uninstall are missing")
