"""The hook against hostile input, run as libvirtd runs it: one line, status 1, nothing changed.

Every document of the corpus is a guest the hook would prepare if it let the document through,
so an accepted one shows as a RAM file or a journal entry left behind.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.hostile.corpus import NAME, good, hostile_xml
from tests.hoststate import snapshot
from tests.libvirt.conftest import HOOK, HookHost

CORPUS = hostile_xml()


def _refused(result: subprocess.CompletedProcess[bytes], *words: str) -> str:
    err = result.stderr.decode(errors="replace")
    lines = err.strip().splitlines()
    assert result.returncode == 1, err
    assert len(lines) == 1 and lines[0].startswith("vfiotask: "), err
    assert "Traceback" not in err
    assert result.stdout == b""
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(("case", "name", "data", "words"), CORPUS, ids=[c[0] for c in CORPUS])
def test_prepare_refuses_with_one_line_and_changes_nothing(hook_host: HookHost, case: str, name: str,
                                                           data: bytes, words: tuple[str, ...]) -> None:
    before = snapshot(hook_host.state, hook_host.backing_dir)
    result = hook_host.run(name, "start", "begin", data)
    line = _refused(result, *words)
    assert len(line) < 1000  # a hostile value is not echoed back whole
    assert snapshot(hook_host.state, hook_host.backing_dir) == before


@pytest.mark.parametrize(("case", "name", "data", "words"), CORPUS[:: 7], ids=[c[0] for c in CORPUS[:: 7]])
def test_start_refuses_the_same_input(hook_host: HookHost, case: str, name: str, data: bytes,
                                      words: tuple[str, ...]) -> None:
    before = snapshot(hook_host.state, hook_host.backing_dir)
    result = hook_host.run(name, "start", "begin", data)
    if result.returncode == 0:  # a refusal that needs the prepared state (no id, a mismatched name) is prepare's
        assert result.stderr == result.stdout == b""
    else:
        _refused(result)
    assert snapshot(hook_host.state, hook_host.backing_dir) == before


def test_release_with_hostile_input_never_fails_the_stop(hook_host: HookHost) -> None:
    """release end is recovery: whatever arrives, the stop goes on (status 0), silently."""
    assert hook_host.run(NAME, "start", "begin", good()).returncode == 0
    prepared = snapshot(hook_host.state, hook_host.backing_dir)
    for case, name, data, _words in CORPUS:
        if name == NAME:
            continue  # the guest really prepared: its release is the real one, below
        result = hook_host.run(name, "release", "end", data)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b""), case
    assert snapshot(hook_host.state, hook_host.backing_dir) == prepared
    result = hook_host.run(NAME, "release", "end", b"\0 not xml")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert not any(hook_host.backing_dir.rglob("pc.ram"))


ARGV = [
    ("no-arguments", [], 1),
    ("name-only", [NAME], 1),
    ("no-subphase", [NAME, "prepare"], 1),
    ("unknown-phase", [NAME, "explode", "begin", "-"], 0),
    ("unknown-subphase", [NAME, "prepare", "sideways", "-"], 0),
    ("empty-phase", [NAME, "", "", ""], 0),
    ("phase-with-newline", [NAME, "prepare\nbegin", "begin", "-"], 0),
    ("extra-arguments", [NAME, "started", "begin", "-", "--surprise", "x" * 5000], 0),
]


@pytest.mark.parametrize(("case", "argv", "status"), ARGV, ids=[a[0] for a in ARGV])
def test_argv_from_something_other_than_libvirtd(hook_host: HookHost, case: str, argv: list[str],
                                                 status: int) -> None:
    """Missing arguments fail with one line; phases vfiotask does not act on are left alone (0, silent)."""
    before = snapshot(hook_host.state, hook_host.backing_dir)
    result = subprocess.run([sys.executable, str(HOOK), *argv], input=good().encode(), capture_output=True,
                            env=hook_host.env(), timeout=60)
    assert result.returncode == status, result.stderr
    assert result.stdout == b""
    if status:
        _refused(result, "NAME PHASE SUBPHASE")
    else:
        assert result.stderr == b""
    assert snapshot(hook_host.state, hook_host.backing_dir) == before


def test_extra_arguments_do_not_stop_a_real_prepare(hook_host: HookHost) -> None:
    result = subprocess.run([sys.executable, str(HOOK), NAME, "start", "begin", "-", "more"],
                            input=good().encode(), capture_output=True, env=hook_host.env(), timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert hook_host.run(NAME, "release", "end", good()).returncode == 0
    assert not any(hook_host.backing_dir.rglob("pc.ram"))
