"""Hostile numbers at every place a user types one, through the command as a user runs it.

Each is refused with exit 2 and one line naming the option, never a traceback, and before
anything is made (no file, no reservation, no state).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.libvirt.xmls import guest_xml
from tests.support import faults_on

VIABLE = str(REPO / "fixtures" / "sysfs" / "viable" / "sys")

# Digits Python's int() takes or half-takes, lengths and values no one means, signs, blanks.
HOSTILE = {
    "superscript": "\u00b2",
    "fullwidth": "\uff12",
    "arabic-indic": "\u0663",
    "one-and-400-zeros": "1" + "0" * 400,
    "5001-digits": "7" * 5001,
    "negative": "-1",
    "empty": "",
    "blank": " \t",
    "exponent": "1e3",
    "huge": "9" * 30,
}
SIZE_SUFFIXED = {"fullwidth-G": "\uff11G", "arabic-indic-G": "\u0661G", "400-zeros-G": "1" + "0" * 400 + "G",
                 "ambiguous-GB": "1GB", "bits-Gb": "2Gb", "fraction-of-byte": "1.5B"}

ENTRY_POINTS = {
    "prepin --threads": (["prepin", "--size", "4M"], "--threads"),
    "prepin --size": (["prepin"], "--size"),
    "prepin --node": (["prepin", "--size", "4M"], "--node"),
    "prepin --page-size": (["prepin", "--size", "4M"], "--page-size"),
    "prepin --min-chunk": (["prepin", "--size", "4M"], "--min-chunk"),
    "prepin --helper-nice": (["prepin", "--size", "4M"], "--helper-nice"),
    "prepin --group": (["prepin", "--size", "4M", "--pin", "mock", "--sysfs-root", VIABLE], "--group"),
    "prepin --iova": (["prepin", "--size", "4M", "--pin", "mock", "--group", "2", "--sysfs-root", VIABLE], "--iova"),
    "prepin --domain --threads": (["prepin", "--domain", "g"], "--threads"),
    "hugepages --size": (["hugepages", "reserve", "--owner", "t"], "--size"),
    "hugepages --page-size": (["hugepages", "reserve", "--owner", "t", "--size", "2M"], "--page-size"),
    "hugepages --node": (["hugepages", "reserve", "--owner", "t", "--size", "2M"], "--node"),
    "tune --threads": (["tune", "--domain", "g"], "--threads"),
    "bench --size": (["bench", "--repeat", "1"], "--size"),
    "bench --threads": (["bench", "--repeat", "1"], "--threads"),
    "bench --repeat": (["bench"], "--repeat"),
}
ENV_ENTRY_POINTS = {
    "VFIOTASK_FAIL": ("VFIOTASK_FAIL", "prefault:{}", ["prepin", "--size", "4M", "--pin", "none"]),
    "VFIOTASK_MOCK_FAIL index": ("VFIOTASK_MOCK_FAIL", "{}:ENOMEM",
                                 ["prepin", "--size", "4M", "--pin", "mock", "--group", "2", "--sysfs-root", VIABLE]),
    "VFIOTASK_MOCK_FAIL errno": ("VFIOTASK_MOCK_FAIL", "3:{}",
                                 ["prepin", "--size", "4M", "--pin", "mock", "--group", "2", "--sysfs-root", VIABLE]),
}


def assert_refused(result: subprocess.CompletedProcess[str], needle: str, status: int = 2) -> None:
    stderr = result.stderr
    assert result.returncode == status, stderr[-2000:]
    assert result.stdout == "", result.stdout[:2000]
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vfiotask: ") and "Traceback" not in stderr, stderr[-2000:]
    assert needle in lines[0] and len(lines[0]) < 400, lines[0][:400]


def _values(option: str) -> dict[str, str]:
    sized = option in ("--size", "--page-size", "--min-chunk")
    values = dict(HOSTILE)
    if sized:
        values.update(SIZE_SUFFIXED)
        del values["exponent"]  # "1e3" is read as a unit 'e3', refused all the same; kept for counts
    if option == "--helper-nice":
        del values["negative"]  # -1 is a nice value
    return values


CASES = [(entry, name, value) for entry, (_, option) in ENTRY_POINTS.items()
         for name, value in _values(option).items()]


@pytest.mark.parametrize(("entry", "name", "value"), CASES, ids=[f"{e}-{n}" for e, n, _ in CASES])
def test_hostile_numbers_in_options_are_refused(entry: str, name: str, value: str, state_dir: Path,
                                                 tmp_path: Path) -> None:
    args, option = ENTRY_POINTS[entry]
    result = run_cli(*args, f"{option}={value}", env={"HOME": str(tmp_path)})
    assert_refused(result, option)
    assert not state_dir.exists() or not any(state_dir.glob("*.json"))


ENV_CASES = [(entry, name, value) for entry in ENV_ENTRY_POINTS for name, value in HOSTILE.items()
             if not (entry.endswith("errno") and name == "empty")]  # "3:" is no errno; refused as not K:ERRNO


@pytest.mark.parametrize(("entry", "name", "value"), ENV_CASES, ids=[f"{e}-{n}" for e, n, _ in ENV_CASES])
def test_hostile_numbers_in_the_environment_are_refused(entry: str, name: str, value: str, state_dir: Path,
                                                        tmp_path: Path) -> None:
    variable, template, args = ENV_ENTRY_POINTS[entry]
    result = run_cli(*args, env=faults_on(tmp_path, **{variable: template.format(value)}))  # the value is read
    assert_refused(result, variable)


OURS = guest_xml("g", 64, id=1, config={"prefault": "off"})
XML_CASES = {
    "memory in fullwidth digits": OURS.replace("<memory unit='MiB'>64</memory>",
                                               "<memory unit='KiB'>\uff11\uff16\uff13\uff18\uff14</memory>"),
    "memory of 400 digits": OURS.replace(">64</memory>", ">1" + "0" * 400 + "</memory>"),
    "page size zero": guest_xml("g", 64, id=1, config={"prefault": "off"}, hugepages="0"),
    "superscript cell id": guest_xml("g", 64, id=1, config={"prefault": "off"}, cells=[64]).replace(
        "<cell id='0'", "<cell id='\u00b2'"),
    "nodeset past any node": OURS.replace("<vcpu>", "<numatune><memory nodeset='0-99999999999'/></numatune><vcpu>"),
    "threads of 5001 digits": guest_xml("g", 64, id=1, config={"threads": "7" * 5001}),
    "hostdev bus out of range": guest_xml("g", 64, id=1, hostdevs=["0000:01:00.0"], config={}).replace("bus='0x01'",
                                                                                           "bus='0x100'"),
}


@pytest.mark.parametrize("case", sorted(XML_CASES))
def test_hostile_numbers_in_a_domain_definition_fail_the_hook_in_one_line(case: str, state_dir: Path) -> None:
    """The hook's documented failure is exit 1 with one line, which libvirt shows at `virsh start`."""
    result = subprocess.run([sys.executable, str(REPO / "hooks" / "qemu"), "g", "start", "begin", "-"],
                            input=XML_CASES[case], capture_output=True, text=True, timeout=60)
    assert_refused(result, "", status=1)
    assert not state_dir.exists() or not any(state_dir.glob("*.json"))
