"""Two readers of `<name>`: one guest checked, another acted on.

`<name>victim<x/>vm</name>` passed the hook's expat scan as `vm` (the text after the element),
and the domain model (ElementTree, the text before it) then prepared `victim`, removing the RAM
file of the running guest of that name.  Both readers now read the name one way and refuse a
`<name>` holding an element: one line, the victim's file and record as they were.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import requires_root, run_cli
from tests.libvirt.conftest import HookHost, stderr_line
from tests.libvirt.xmls import guest_xml

OURS = {"threads": "2"}
MIXED = ["victim<x/>vm", "victim<x>vm</x>", "vic<!-- -->tim<b/>vm", "<x/>vm"]


def identity(path: Path) -> tuple[int, int, int, int, int]:
    info = os.stat(path)
    return (info.st_ino, info.st_size, info.st_blocks, info.st_uid, info.st_mode)


@requires_root
@pytest.mark.parametrize("mixed", MIXED)
def test_a_name_holding_an_element_never_reaches_the_victim(hook_host: HookHost, mixed: str) -> None:
    victim_xml = guest_xml("victim", 16, id=3, file_backed=True, config=OURS, dac="+64055:+64055")
    assert hook_host.run("victim", "start", "begin", victim_xml).returncode == 0
    ram = hook_host.guest_dir("3-victim") / "pc.ram"
    before = (identity(ram), hook_host.journal(), sorted(os.listdir(hook_host.backing_dir / "libvirt" / "qemu")))

    hostile = guest_xml("vm", 16, id=4, file_backed=True, config=OURS).replace("<name>vm</name>",
                                                                                f"<name>{mixed}</name>")
    assert f"<name>{mixed}</name>" in hostile
    result = hook_host.run("vm", "start", "begin", hostile)
    assert result.returncode == 1 and result.stdout == b""
    assert "<name> holds an element" in stderr_line(result)
    after = (identity(ram), hook_host.journal(), sorted(os.listdir(hook_host.backing_dir / "libvirt" / "qemu")))
    assert after == before
    assert hook_host.run("victim", "release", "end", victim_xml).returncode == 0


def test_every_command_reading_a_definition_refuses_it(tmp_path: Path) -> None:
    xml = tmp_path / "vm.xml"
    xml.write_text(guest_xml("vm", 16, id=4, file_backed=True, config=OURS).replace(
        "<name>vm</name>", "<name>victim<x/>vm</name>"))
    result = run_cli("check", "--xml", str(xml))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "<name> holds an element <x>" in lines[0], result.stderr


def test_a_name_split_by_a_comment_is_one_name_to_both_readers() -> None:
    """A comment, unlike an element, is no content: both readers join the text around it."""
    from vfiotask.integrations.libvirt.domain import parse_domain
    from vfiotask.integrations.libvirt.ours import scan

    xml = guest_xml("vm", 16, id=4, file_backed=True, config=OURS).replace("<name>vm</name>",
                                                                           "<name>v<!-- c -->m</name>")
    assert scan(xml).name == parse_domain(xml).name == "vm"
