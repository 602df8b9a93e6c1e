"""A journal that is not what vfiotask writes is refused whole: one line naming the file, exit 1,
and nothing done from any journal (no partial recovery).

Each case writes one malformed journal beside a valid files journal whose entry, on its own,
makes `vfiotask recover` remove a planted file (checked first); with the malformed journal
there, the planted file, the valid journal and the malformed one are all left as they were.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli

BOOT = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
ID = "0123456789abcdef0123456789abcdef"


def dead_pid() -> int:
    return next(pid for pid in range(4_000_000, 4_100_000) if not Path(f"/proc/{pid}").exists())


def dead_holder() -> dict[str, Any]:
    return {"pid": dead_pid(), "start": 1, "boot": BOOT}


def file_entry(path: Path, **changes: Any) -> dict[str, Any]:
    """A done file entry of a killed prepin for the file at `path` (as the journal records it)."""
    info, parent = os.lstat(path), os.lstat(path.parent)
    entry = {"id": ID, "owner": "prepin", "kind": "file", "state": "done", "holder": dead_holder(),
             "root": str(path.parent), "parts": [], "dir": [parent.st_dev, parent.st_ino], "name": path.name,
             "ident": [info.st_dev, info.st_ino]}
    return {**entry, **changes}


def pool_entry(**changes: Any) -> dict[str, Any]:
    entry = {"id": ID, "owner": "admin", "kind": "pool", "state": "intent", "holder": dead_holder(),
             "page_size": 2 << 20, "node": "any", "before": 0, "pages": 1}
    return {**entry, **changes}


def guest(**changes: Any) -> dict[str, Any]:
    record = {"id": 3, "uuid": None, "began": 1.0, "holder": dead_holder(), "files": [], "hugepages": []}
    return {**record, **changes}


def as_json(data: Any) -> bytes:
    return json.dumps(data).encode()


# (case, journal file, its content): at least one of each way a journal can be wrong
SHAPES: list[tuple[str, str, Any]] = [
    ("truncated JSON", "hugepages.json", b'{"owners": {"a": {"page_size": 2097152, "pa'),
    ("not UTF-8", "libvirt.json", b'{"guests": {"\xff": {}}}'),
    ("not an object", "pins.json", b'[{"kind": "pin"}]'),
    ("intents is text", "files.json", lambda planted: as_json({"intents": "x"})),
    ("an unknown section", "libvirt.json", as_json({"guests": {}, "domains": {}})),
    ("an unknown kind", "files.json", lambda planted: as_json({"intents": [file_entry(planted, kind="symlink")]})),
    ("a relative root", "files.json", lambda planted: as_json({"intents": [file_entry(planted, root="tmp/x")]})),
    ("a root with ..", "files.json", lambda planted: as_json({"intents": [file_entry(planted, root="/tmp/../etc")]})),
    ("parts as a string", "files.json", lambda planted: as_json({"intents": [file_entry(planted, parts="abc")]})),
    ("a part that is ..", "files.json", lambda planted: as_json({"intents": [file_entry(planted, parts=[".."])]})),
    ("a name with a slash", "files.json", lambda planted: as_json({"intents": [file_entry(planted, name="a/b")]})),
    ("a NUL in a path", "files.json", lambda planted: as_json({"intents": [file_entry(planted, root="/tmp\0x")]})),
    ("an identity of one number", "files.json",
     lambda planted: as_json({"intents": [file_entry(planted, ident=[1])]})),
    ("an identity of text", "files.json",
     lambda planted: as_json({"intents": [file_entry(planted, dir=["1", "2"])]})),
    ("a holder with a text pid", "files.json",
     lambda planted: as_json({"intents": [file_entry(planted, holder={"pid": "1", "start": 1, "boot": BOOT})]})),
    ("a holder committed as a string", "files.json",
     lambda planted: as_json({"intents": [file_entry(planted, holder={"committed": "yes", "boot": BOOT})]})),
    ("a pool entry without page_size", "hugepages.json",
     as_json({"intents": [{k: v for k, v in pool_entry().items() if k != "page_size"}]})),
    ("a page size that is no power of two", "hugepages.json", as_json({"intents": [pool_entry(page_size=3000)]})),
    ("a count that is true", "hugepages.json", as_json({"intents": [pool_entry(pages=True)]})),
    ("a negative count", "hugepages.json", as_json({"intents": [pool_entry(before=-1)]})),
    ("a node with a leading zero", "hugepages.json", as_json({"intents": [pool_entry(node="01")]})),
    ("an owner record without pages", "hugepages.json", as_json({"owners": {"a": {"page_size": 2097152}}})),
    ("an owner record under another key", "hugepages.json",
     as_json({"owners": {"a": {"owner": "b", "page_size": 2097152, "pages": {}}}})),
    ("NaN for a time", "libvirt.json", b'{"guests": {"g": {"id": 3, "uuid": null, "began": NaN, "holder": '
     b'{"committed": true, "boot": "x"}, "files": [], "hugepages": []}}}'),
    ("a key twice", "pins.json", b'{"intents": [], "intents": []}'),
    ("a number of 5000 digits", "hugepages.json",
     b'{"intents": [{"id": "x", "before": ' + b"9" * 5000 + b"}]}"),
    ("nesting deeper than the stack", "hugepages.json", b"[" * 100_000 + b"]" * 100_000),
    ("a guest's files as text", "libvirt.json", as_json({"guests": {"g": guest(files="pc.ram")}})),
    ("an owner the libvirt journal never records", "libvirt.json",
     as_json({"intents": [{"id": ID, "owner": "prepin", "kind": "dir", "state": "intent", "holder": dead_holder(),
                           "root": "/var/lib/libvirt/qemu/ram", "parts": [], "dir": [1, 2], "name": "3-g"}]})),
    ("a binding of a path, not an address", "bindings.json",
     as_json({"/sys": {"../../x": {"address": "../../x", "group": 1, "driver": None, "override": None,
                                   "bound_to": "vfio-pci", "holder": dead_holder()}}})),
    ("a binding under a relative tree", "bindings.json", as_json({"sys": {}})),
]


@pytest.fixture
def planted(tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file a killed prepin left, and its valid journal entry in a private state dir."""
    conf = tmp_path / "qemu.conf"
    conf.write_text(f'memory_backing_dir = "{tmp_path / "backing"}"\n')
    monkeypatch.setenv("VFIOTASK_LIBVIRT_QEMU_CONF", str(conf))
    state_dir.mkdir(mode=0o700)
    left = tmp_path / "planted" / "left.ram"
    left.parent.mkdir()
    left.write_bytes(b"guest memory")
    (state_dir / "files.json").write_bytes(as_json({"intents": [file_entry(left)]}))
    return left


def test_the_planted_entry_alone_is_recovered(planted: Path, state_dir: Path) -> None:
    result = run_cli("recover")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"files: removed file {planted}\n", "")
    assert not planted.exists() and not (state_dir / "files.json").exists()


@pytest.mark.parametrize(("case", "name", "content"), SHAPES, ids=[case for case, _, _ in SHAPES])
def test_a_malformed_journal_refuses_everything(planted: Path, state_dir: Path, case: str, name: str,
                                               content: Any) -> None:
    data = content(planted) if callable(content) else content
    journal = state_dir / name
    journal.write_bytes(data)
    before = {path.name: path.read_bytes() for path in state_dir.iterdir()}

    for argv in (["recover"], ["recover", "--dry-run", "--json"]):
        result = run_cli(*argv)
        assert result.returncode == 1, (case, result.stdout, result.stderr)
        assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(f"vfiotask: journal {journal} is "), result.stderr
        assert "Traceback" not in result.stderr
    assert planted.read_bytes() == b"guest memory"
    assert {path.name: path.read_bytes() for path in state_dir.iterdir()} == before


@pytest.mark.parametrize(("argv", "name"), [
    (["hugepages", "status"], "hugepages.json"),
    (["hook", "status"], "libvirt.json"),
    (["unbind", "0000:01:00.0"], "bindings.json"),
])
def test_commands_reading_one_journal_refuse_it_in_one_line(state_dir: Path, argv: list[str], name: str) -> None:
    state_dir.mkdir(mode=0o700)
    (state_dir / name).write_bytes(b'{"intents": "x"}')
    env = {"VFIOTASK_SYSFS_ROOT": str(Path(__file__).resolve().parents[2] / "fixtures/sysfs/viable/sys")}
    result = run_cli(*argv, env=env)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"journal {state_dir / name} is malformed" in result.stderr and "Traceback" not in result.stderr
    assert (state_dir / name).read_bytes() == b'{"intents": "x"}'
