"""Every entry and record the journals hold, as typed values checked field by field when read.

A journal is what root undoes from after a crash: a file named in it is removed, a pool count in
it is given back, a driver in it is bound again.  So nothing is taken from a journal file as it
stands: it is read whole into these records, each field's type, range and form checked (absolute
paths without NUL, plain names, identities that are pairs of whole numbers, holders that name a
process or a commitment), and a file or directory entry's root must be one its journal may touch.
A journal that fails any check is refused whole, before anything is done: `Malformed` says what
and where, and `vfiotask.journal` turns it into one line naming the file.

Owners are structured values compared exactly: a guest's hugepages are (guest, page size), so
releasing guest `vm` never touches the reservation of guest `vm:1`.  Their text (`libvirt:NAME`,
`libvirt:NAME:PAGESIZE`, ...) is only how they are written in the files.

NamedTuples and plain classes, not dataclasses: the libvirt hook reads the libvirt and hugepage
journals on every start of a prepared guest, and importing dataclasses costs it milliseconds.
For the same reason this module does without `from __future__ import annotations`: NamedTuple
compiles every field annotation given as a string into a ForwardRef, several times the cost of
the class itself (names defined further down are quoted instead).
"""

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Self

from vfiotask.errors import UsageError
from vfiotask.units import MAX_ID, MAX_NODE, MAX_SIZE, parse_count

INTENT = "intent"
DONE = "done"

FILE = "file"
DIR = "dir"
POOL = "pool"
PIN = "pin"
STAGED_PAGES = "hugepages"  # a staging's hugepage reservation, recorded beside its files
HANDOVER = "handover"  # a guest's RAM directory renamed from root's private directory to where QEMU opens it

MAX_NUMBER = (1 << 63) - 1  # a page count, a size, a time in clock ticks
MAX_IDENT = (1 << 64) - 1  # st_dev and st_ino are 64-bit unsigned
MAX_PID = 1 << 22  # PID_MAX_LIMIT
MAX_PATH = 4096
MAX_NAME = 255
MAX_OWNER = 256
MIN_PAGE = 4096
MAX_TIME = 1e12  # seconds since the epoch, or a duration: far beyond any real one

Identity = tuple[int, int]  # (st_dev, st_ino)
Pages = Mapping[int | None, int]  # pages per host node (None: the global pool)


class Malformed(ValueError):
    """What is wrong in a journal's content, and where in it (`intents[2].parts[0] is '..', not
    a plain name`); the journal that read it names the file."""


# -- checks of single values ---------------------------------------------------------------------


def _shown(value: Any) -> str:
    text = repr(value[:60] if isinstance(value, str | list) else value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _not(where: str, value: Any, wanted: str) -> Malformed:
    return Malformed(f"{where} is {_shown(value)}, not {wanted}")


def _fields(value: Any, where: str, required: Iterable[str], optional: Iterable[str] = ()) -> dict[str, Any]:
    """An object with every `required` key and nothing but those and the `optional` ones."""
    if not isinstance(value, dict):
        raise _not(where, value, "an object")
    required = tuple(required)
    for key in required:
        if key not in value:
            raise Malformed(f"{where} has no {key!r}")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise Malformed(f"{where} has an unknown key {_shown(unknown[0])}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _not(where, value, "a list")
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _not(where, value, "an object")
    return value


def _whole(value: Any, where: str, *, minimum: int = 0, maximum: int = MAX_NUMBER) -> int:
    if type(value) is not int or not minimum <= value <= maximum:  # bool is an int, and no number here
        raise _not(where, value, f"a whole number from {minimum} to {maximum}")
    return value


def _maybe_whole(value: Any, where: str, *, minimum: int = 0, maximum: int = MAX_NUMBER) -> int | None:
    return None if value is None else _whole(value, where, minimum=minimum, maximum=maximum)


def _seconds(value: Any, where: str) -> float:
    """A time (seconds since the epoch) or a duration: finite, not negative."""
    if type(value) not in (int, float) or not 0 <= value <= MAX_TIME:  # NaN and infinities fail the range too
        raise _not(where, value, "a time in seconds")
    return float(value)


def _flag(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise _not(where, value, "true or false")
    return value


def _text(value: Any, where: str, *, limit: int = MAX_PATH) -> str:
    """Non-empty text without NUL or line breaks, at most `limit` characters."""
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise _not(where, value, f"printable text of 1 to {limit} characters")
    return value


def _maybe_text(value: Any, where: str, *, limit: int = MAX_PATH) -> str | None:
    return None if value is None else _text(value, where, limit=limit)


def _name(value: Any, where: str) -> str:
    """A plain name: one level of a path, never `.`, `..`, a `/` or a NUL."""
    if (not isinstance(value, str) or not value or len(value) > MAX_NAME or value in (".", "..")
            or "/" in value or "\0" in value):
        raise _not(where, value, "a plain name")
    return value


def _maybe_name(value: Any, where: str) -> str | None:
    return None if value is None else _name(value, where)


def is_normal_path(text: str) -> bool:
    """Absolute, without NUL, `.`, `..`, empty levels or a trailing slash: one spelling of one path."""
    return (0 < len(text) <= MAX_PATH and text.startswith("/") and "\0" not in text
            and (text == "/" or (not text.startswith("//") and os.path.normpath(text) == text)))


def _path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not is_normal_path(value):
        raise _not(where, value, "an absolute, normalised path")
    return value


def _maybe_path(value: Any, where: str) -> str | None:
    return None if value is None else _path(value, where)


def _absolute(value: Any, where: str) -> str:
    """A path below an allowed root (which is the administrator's, spelled as configured)."""
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value or len(value) > MAX_PATH:
        raise _not(where, value, "an absolute path")
    return value


def _identity(value: Any, where: str) -> Identity:
    if not isinstance(value, list) or len(value) != 2:
        raise _not(where, value, "a pair [device, inode]")
    return (_whole(value[0], f"{where}[0]", maximum=MAX_IDENT), _whole(value[1], f"{where}[1]", maximum=MAX_IDENT))


def _hex(value: Any, where: str, length: int) -> str:
    if not isinstance(value, str) or len(value) != length or not set(value) <= set("0123456789abcdef"):
        raise _not(where, value, f"{length} lower-case hexadecimal digits")
    return value


def _one_of(value: Any, where: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise _not(where, value, f"one of {', '.join(allowed)}")
    return str(value)


def node_key(node: int | None) -> str:
    """How a host node is written in the journals: its number, or `any` for the global pool."""
    return "any" if node is None else str(node)


def _node(value: Any, where: str) -> int | None:
    if value == "any":
        return None
    if not isinstance(value, str):
        raise _not(where, value, "a node number or 'any'")
    try:
        node = parse_count(value, where, minimum=0, maximum=MAX_NODE)
    except UsageError as exc:
        raise _not(where, value, "a node number or 'any'") from exc
    if str(node) != value:
        raise _not(where, value, "a node number without blanks or leading zeros")
    return node


def _pages(value: Any, where: str) -> dict[int | None, int]:
    pages: dict[int | None, int] = {}
    for key, count in _mapping(value, where).items():
        node = _node(key, f"{where} key")
        pages[node] = _whole(count, f"{where}[{key!r}]")
    return pages


def pages_json(pages: Pages) -> dict[str, int]:
    return {node_key(node): count for node, count in pages.items()}


def is_page_size(size: int) -> bool:
    """A power of two from the base page's 4 KiB up: what a pool, or a guest's owner, is named by."""
    return MIN_PAGE <= size <= MAX_SIZE and not size & (size - 1)


def _page_size(value: Any, where: str) -> int:
    if type(value) is not int or not is_page_size(value):
        raise _not(where, value, "a page size (a power of two, 4 KiB or more)")
    return value


# -- holders -------------------------------------------------------------------------------------


class Holder(NamedTuple):
    """Who can still give a change back itself: a process (pid and start time, in boot `boot`),
    or, `committed`, the change's owner (a prepared guest, a reservation) until released."""

    boot: str
    pid: int | None = None
    start: int | None = None
    committed: bool = False

    def to_json(self) -> dict[str, Any]:
        if self.committed:
            return {"committed": True, "boot": self.boot}
        return {"pid": self.pid, "start": self.start, "boot": self.boot}

    @classmethod
    def from_json(cls, value: Any, where: str) -> "Holder":
        if isinstance(value, dict) and "committed" in value:
            data = _fields(value, where, ("committed", "boot"))
            if data["committed"] is not True:
                raise _not(f"{where}.committed", data["committed"], "true")
            return cls(_text(data["boot"], f"{where}.boot", limit=64), committed=True)
        data = _fields(value, where, ("pid", "start", "boot"))
        return cls(_text(data["boot"], f"{where}.boot", limit=64), _whole(data["pid"], f"{where}.pid", minimum=1,
                                                                               maximum=MAX_PID),
                   _maybe_whole(data["start"], f"{where}.start"))


# -- owners --------------------------------------------------------------------------------------

GUEST = "guest"  # what the hook's prepare made for a guest: `libvirt:NAME`
STAGING = "staging"  # what `prepin --domain` staged for a guest: `libvirt-staged:NAME`
GUEST_PAGES = "guest-pages"  # a guest's hugepages of one page size: `libvirt:NAME:PAGESIZE`
SHARED = "shared"  # the directories every guest shares: `libvirt`
PREPIN = "prepin"  # backing files and pins of `vfiotask prepin`: `prepin`
NAMED = "named"  # a hugepage reservation an administrator named: the name itself

_LIBVIRT = "libvirt"
_STAGED = "libvirt-staged"


class Owner(NamedTuple):
    """Who a journaled change belongs to; compared whole, never by a prefix of its text."""

    role: str
    name: str = ""
    page_size: int = 0

    def __str__(self) -> str:
        """The owner as the journals write it (and as `hugepages status` shows it)."""
        if self.role == GUEST:
            return f"{_LIBVIRT}:{self.name}"
        if self.role == STAGING:
            return f"{_STAGED}:{self.name}"
        if self.role == GUEST_PAGES:
            return f"{_LIBVIRT}:{self.name}:{self.page_size}"
        if self.role == SHARED:
            return _LIBVIRT
        if self.role == PREPIN:
            return PREPIN
        return self.name

    @property
    def guest(self) -> str | None:
        """The guest whose change this is (its preparation, staging or hugepages), if any."""
        return self.name if self.role in (GUEST, STAGING, GUEST_PAGES) else None


def guest_owner(name: str) -> Owner:
    return Owner(GUEST, name)


def staging_owner(name: str) -> Owner:
    return Owner(STAGING, name)


def guest_pages_owner(name: str, page_size: int) -> Owner:
    return Owner(GUEST_PAGES, name, page_size)


SHARED_OWNER = Owner(SHARED)
PREPIN_OWNER = Owner(PREPIN)


def hugepage_owner(text: str) -> Owner:
    """A hugepage reservation's owner from its text: a guest's (`libvirt:NAME:PAGESIZE`, read from
    the right, since a guest's name may hold `:`), or else the administrator's name as it is."""
    if text.startswith(f"{_LIBVIRT}:"):
        name, _, size = text[len(_LIBVIRT) + 1:].rpartition(":")
        try:
            page_size = parse_count(size, "page size", minimum=1, maximum=MAX_SIZE)
        except UsageError:
            page_size = 0
        owner = guest_pages_owner(name, page_size)
        if name and is_page_size(page_size) and str(owner) == text:
            return owner
    return Owner(NAMED, text)


def libvirt_owner(text: str) -> Owner | None:
    """An owner of the libvirt journal's entries from its text; None for anything else."""
    if text == _LIBVIRT:
        return SHARED_OWNER
    kind, _, name = text.partition(":")
    if name and kind == _LIBVIRT:
        return guest_owner(name)
    if name and kind == _STAGED:
        return staging_owner(name)
    return None


def prepin_owner(text: str) -> Owner | None:
    return PREPIN_OWNER if text == PREPIN else None


def _hugepage_owner_text(value: Any, where: str) -> Owner:
    return hugepage_owner(_text(value, where, limit=MAX_OWNER))


# -- places --------------------------------------------------------------------------------------


class Place(NamedTuple):
    """A directory below a trusted root: the root is the administrator's (followed), the levels
    below it are walked by descriptor and never through a link."""

    root: Path
    parts: tuple[str, ...]

    @property
    def path(self) -> Path:
        return self.root.joinpath(*self.parts)

    def to_json(self) -> dict[str, Any]:
        return {"root": str(self.root), "parts": list(self.parts)}

    @classmethod
    def from_json(cls, value: Any, where: str, roots: "Roots") -> "Place":
        data = _fields(value, where, ("root", "parts"))
        return cls(Path(_root(data["root"], f"{where}.root", roots)), _parts(data["parts"], f"{where}.parts"))


Roots = frozenset[str] | None
"""The roots a journal's files and directories may be under: exactly these (the libvirt journal:
memory_backing_dir and libvirt's default), or None: any absolute, normalised path (prepin's)."""


def _root(value: Any, where: str, roots: Roots) -> str:
    if roots is None:
        return _path(value, where)
    if not isinstance(value, str) or value not in roots:
        allowed = ", ".join(sorted(roots)) or "none"
        raise Malformed(f"{where} {_shown(value)} is not a directory this journal may change (only {allowed})")
    return value


def _parts(value: Any, where: str) -> tuple[str, ...]:
    return tuple(_name(part, f"{where}[{index}]") for index, part in enumerate(_list(value, where)))


# -- entries: changes recorded before they are made ---------------------------------------------


class FsChange(NamedTuple):
    """A file or directory made below a trusted root: where (root, the levels below it, the
    identity of the directory it was made in, its name) and the identity it got (None for a
    directory only intended)."""

    kind: str  # FILE or DIR
    root: str
    parts: tuple[str, ...]
    dir: Identity
    name: str
    ident: Identity | None = None

    @property
    def path(self) -> Path:
        return Path(self.root, *self.parts, self.name)

    @property
    def place(self) -> "Place":
        return Place(Path(self.root), self.parts)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"root": self.root, "parts": list(self.parts), "dir": list(self.dir),
                                "name": self.name}
        if self.ident is not None:
            data["ident"] = list(self.ident)
        return data


class PoolGrowth(NamedTuple):
    """Pages a reservation adds to a pool: the pool's count before, the pages asked, those it gave."""

    page_size: int
    node: int | None
    before: int
    pages: int
    got: int | None = None

    @property
    def kind(self) -> str:
        return POOL

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"page_size": self.page_size, "node": node_key(self.node), "before": self.before,
                                "pages": self.pages}
        if self.got is not None:
            data["got"] = self.got
        return data


class PinsHeld(NamedTuple):
    """Memory a process pins (with `backend`) while it runs: the kernel unpins it when the process ends."""

    bytes: int
    backend: str

    @property
    def kind(self) -> str:
        return PIN

    def to_json(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "backend": self.backend}


class StagedPages(NamedTuple):
    """The hugepage reservation a staging made for its files (owned by the guest's hugepages)."""

    hugepages_owner: Owner

    @property
    def kind(self) -> str:
        return STAGED_PAGES

    def to_json(self) -> dict[str, Any]:
        return {"hugepages_owner": str(self.hugepages_owner)}


class Handover(NamedTuple):
    """The finished guest directory (identity `moved`) renamed from root's private directory to
    `name` in the guests' directory (`root`/`parts`, whose identity is `dir`), where QEMU opens it."""

    root: str
    parts: tuple[str, ...]
    dir: Identity
    name: str
    moved: Identity

    @property
    def kind(self) -> str:
        return HANDOVER

    @property
    def place(self) -> "Place":
        return Place(Path(self.root), self.parts)

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "parts": list(self.parts), "dir": list(self.dir), "name": self.name,
                "moved": list(self.moved)}


Change = FsChange | PoolGrowth | PinsHeld | StagedPages | Handover

_CHANGE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # kind: (required, optional) keys
    FILE: (("root", "parts", "dir", "name", "ident"), ()),
    DIR: (("root", "parts", "dir", "name"), ("ident",)),
    POOL: (("page_size", "node", "before", "pages"), ("got",)),
    PIN: (("bytes", "backend"), ()),
    STAGED_PAGES: (("hugepages_owner",), ()),
    HANDOVER: (("root", "parts", "dir", "name", "moved"), ()),
}
_ENTRY_KEYS = ("id", "owner", "kind", "state", "holder")


class Entry(NamedTuple):
    """One change, recorded before it is made: its id, owner, holder, what it is, and whether it is made."""

    id: str
    owner: Owner
    holder: Holder
    change: Change
    done: bool = False

    @property
    def kind(self) -> str:
        return self.change.kind

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "owner": str(self.owner), "kind": self.kind, "state": DONE if self.done else INTENT,
                "holder": self.holder.to_json(), **self.change.to_json()}


class Rules:
    """What one journal's entries may be: how its owners are written, which kinds each owner's role
    may record (role: kinds), and the roots its files and directories may be under."""

    __slots__ = ("kinds", "owner", "roots")

    def __init__(self, owner: Callable[[str], Owner | None], kinds: Mapping[str, frozenset[str]],
                 roots: "Roots" = None) -> None:
        self.owner = owner
        self.kinds = kinds
        self.roots = roots

    def under(self, roots: "Roots") -> "Rules":
        return Rules(self.owner, self.kinds, roots)


def _change(kind: str, data: dict[str, Any], where: str, done: bool, roots: Roots) -> Change:
    if kind in (FILE, DIR):
        ident = data.get("ident")
        if kind == DIR and (ident is not None) != done:
            raise Malformed(f"{where} is a directory {'made without' if done else 'intended with'} an identity")
        return FsChange(kind, _root(data["root"], f"{where}.root", roots), _parts(data["parts"], f"{where}.parts"),
                        _identity(data["dir"], f"{where}.dir"), _name(data["name"], f"{where}.name"),
                        None if ident is None else _identity(ident, f"{where}.ident"))
    if kind == POOL:
        if ("got" in data) != done:
            raise Malformed(f"{where} is a pool growth {'made without' if done else 'intended with'} its pages got")
        return PoolGrowth(_page_size(data["page_size"], f"{where}.page_size"), _node(data["node"], f"{where}.node"),
                          _whole(data["before"], f"{where}.before"), _whole(data["pages"], f"{where}.pages"),
                          _maybe_whole(data.get("got"), f"{where}.got"))
    if kind == HANDOVER:
        return Handover(_root(data["root"], f"{where}.root", roots), _parts(data["parts"], f"{where}.parts"),
                        _identity(data["dir"], f"{where}.dir"), _name(data["name"], f"{where}.name"),
                        _identity(data["moved"], f"{where}.moved"))
    if kind == PIN:
        return PinsHeld(_whole(data["bytes"], f"{where}.bytes"), _name(data["backend"], f"{where}.backend"))
    owner = _hugepage_owner_text(data["hugepages_owner"], f"{where}.hugepages_owner")
    if owner.role != GUEST_PAGES:
        raise _not(f"{where}.hugepages_owner", str(owner), "a guest's hugepages (libvirt:NAME:PAGESIZE)")
    return StagedPages(owner)


def _entry(value: Any, where: str, rules: Rules) -> Entry:
    kind = _mapping(value, where).get("kind")
    if kind not in _CHANGE_KEYS:
        raise _not(f"{where}.kind", kind, f"one of {', '.join(_CHANGE_KEYS)}")
    required, optional = _CHANGE_KEYS[kind]
    data = _fields(value, where, (*_ENTRY_KEYS, *required), optional)
    owner_text = _text(data["owner"], f"{where}.owner", limit=MAX_OWNER)
    owner = rules.owner(owner_text)
    if owner is None:
        raise Malformed(f"{where}.owner {_shown(owner_text)} is not an owner this journal records")
    if kind not in rules.kinds.get(owner.role, frozenset()):
        raise Malformed(f"{where} is a {kind} entry, which {owner_text} does not record in this journal")
    done = _one_of(data["state"], f"{where}.state", (INTENT, DONE)) == DONE
    change = _change(kind, data, where, done, rules.roots)
    if isinstance(change, StagedPages) and change.hugepages_owner.guest != owner.guest:
        raise Malformed(f"{where}.hugepages_owner is another guest's ({change.hugepages_owner})")
    return Entry(_hex(data["id"], f"{where}.id", 32), owner, Holder.from_json(data["holder"], f"{where}.holder"),
                 change, done)


def _entries(value: Any, rules: Rules) -> list[Entry]:
    entries = [_entry(item, f"intents[{index}]", rules) for index, item in enumerate(_list(value, "intents"))]
    ids = [entry.id for entry in entries]
    if len(set(ids)) != len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise Malformed(f"intents hold the id {twice} twice")
    return entries


# -- records of the libvirt journal -------------------------------------------------------------


class FileRecord(NamedTuple):
    """A RAM file vfiotask made: where, how big, which node, and its identity."""

    path: str
    size: int
    node: int | None
    dev: int
    inode: int
    allocated: int
    seconds: float = 0.0
    threads: int = 0
    staged_from: str | None = None
    root: str | None = None
    parts: tuple[str, ...] = ()

    @property
    def place(self) -> "Place":
        return Place(Path(self.root or Path(self.path).parent), tuple(self.parts))

    @property
    def name(self) -> str:
        return Path(self.path).name

    def to_json(self) -> dict[str, Any]:
        return {**self._asdict(), "parts": list(self.parts)}

    @classmethod
    def from_json(cls, value: Any, where: str, roots: Roots = None) -> "FileRecord":
        data = _fields(value, where, ("path", "size", "node", "dev", "inode", "allocated"),
                       ("seconds", "threads", "staged_from", "root", "parts"))
        path = _text(data["path"], f"{where}.path")
        root = data.get("root")
        parts = _parts(data.get("parts", []), f"{where}.parts")
        if root is None:
            _path(path, f"{where}.path")
        else:
            root = _root(root, f"{where}.root", roots)
            if path != str(Path(root, *parts, Path(path).name)) or Path(path).name in ("", ".", ".."):
                raise Malformed(f"{where}.path {_shown(path)} is not in its directory {Path(root, *parts)}")
        return cls(path, _whole(data["size"], f"{where}.size", maximum=MAX_SIZE),
                   _maybe_whole(data["node"], f"{where}.node", maximum=MAX_NODE),
                   _whole(data["dev"], f"{where}.dev", maximum=MAX_IDENT),
                   _whole(data["inode"], f"{where}.inode", maximum=MAX_IDENT),
                   _whole(data["allocated"], f"{where}.allocated"),
                   _seconds(data.get("seconds", 0.0), f"{where}.seconds"),
                   _whole(data.get("threads", 0), f"{where}.threads"),
                   None if data.get("staged_from") is None else _absolute(data["staged_from"], f"{where}.staged_from"),
                   root, parts)


class Reservation(NamedTuple):
    """What `owner` holds: `pages[node]` pages of `page_size` bytes (node None: the global pool)."""

    owner: Owner
    page_size: int
    pages: Pages
    already_held: bool = False

    @property
    def size(self) -> int:
        return self.page_size * sum(self.pages.values())

    def to_json(self) -> dict[str, Any]:
        return {"owner": str(self.owner), "page_size": self.page_size, "pages": pages_json(self.pages),
                "bytes": self.size, "already_held": self.already_held}

    @classmethod
    def from_json(cls, value: Any, where: str) -> "Reservation":
        data = _fields(value, where, ("owner", "page_size", "pages"), ("bytes", "already_held"))
        held = cls(_hugepage_owner_text(data["owner"], f"{where}.owner"),
                   _page_size(data["page_size"], f"{where}.page_size"), _pages(data["pages"], f"{where}.pages"),
                   _flag(data.get("already_held", False), f"{where}.already_held"))
        if data.get("bytes", held.size) != held.size:
            raise _not(f"{where}.bytes", data["bytes"], f"{held.size} (its pages times their size)")
        return held


class PlacementRecord(NamedTuple):
    """The host node the guest's memory was put on (None: left to the kernel) and why."""

    node: int | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "reason": self.reason}

    @classmethod
    def from_json(cls, value: Any, where: str) -> "PlacementRecord":
        data = _fields(value, where, ("node", "reason"))
        if not isinstance(data["reason"], str):
            raise _not(f"{where}.reason", data["reason"], "text")
        return cls(_maybe_whole(data["node"], f"{where}.node", maximum=MAX_NODE), data["reason"])


class AtStart(NamedTuple):
    """What `start begin` found and did: bytes each file held, their inodes, when, and to whom
    the files were given (uid, gid; None without a DAC label)."""

    allocated: Mapping[str, int]
    inodes: Mapping[str, int]
    time: float
    owner: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"allocated": dict(self.allocated), "inodes": dict(self.inodes), "time": self.time}
        if self.owner is not None:
            data["owner"] = list(self.owner)
        return data

    @classmethod
    def from_json(cls, value: Any, where: str) -> "AtStart":
        data = _fields(value, where, ("allocated", "inodes", "time"), ("owner",))
        allocated = {_absolute(path, f"{where}.allocated key"): _whole(n, f"{where}.allocated[{path!r}]")
                     for path, n in _mapping(data["allocated"], f"{where}.allocated").items()}
        inodes = {_absolute(path, f"{where}.inodes key"): _whole(n, f"{where}.inodes[{path!r}]", maximum=MAX_IDENT)
                  for path, n in _mapping(data["inodes"], f"{where}.inodes").items()}
        owner = None
        if "owner" in data:
            pair = data["owner"]
            if not isinstance(pair, list) or len(pair) != 2:
                raise _not(f"{where}.owner", pair, "a pair [uid, gid]")
            owner = (_whole(pair[0], f"{where}.owner[0]", maximum=MAX_ID),
                     _whole(pair[1], f"{where}.owner[1]", maximum=MAX_ID))
        return cls(allocated, inodes, _seconds(data["time"], f"{where}.time"), owner)


class GuestRecord(NamedTuple):
    """What the hook's prepare took for a guest, and what its start did."""

    id: int | None
    uuid: str | None
    began: float
    holder: Holder
    files: tuple[FileRecord, ...] = ()
    hugepages: tuple[Reservation, ...] = ()
    placement: PlacementRecord | None = None
    guest_dir: str | None = None
    place: Place | None = None
    prepared: float | None = None
    at_start: AtStart | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "uuid": self.uuid, "began": self.began,
                                "holder": self.holder.to_json(), "files": [f.to_json() for f in self.files],
                                "hugepages": [h.to_json() for h in self.hugepages]}
        for key in ("placement", "place", "at_start"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value.to_json()
        for key in ("guest_dir", "prepared"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_json(cls, value: Any, where: str, roots: Roots) -> "GuestRecord":
        data = _fields(value, where, ("id", "uuid", "began", "holder", "files", "hugepages"),
                       ("placement", "guest_dir", "place", "prepared", "at_start"))
        place = None if "place" not in data else Place.from_json(data["place"], f"{where}.place", roots)
        guest_dir = _maybe_text(data.get("guest_dir"), f"{where}.guest_dir")
        if guest_dir is not None and (place is None or guest_dir != str(place.path)):
            raise Malformed(f"{where}.guest_dir {_shown(guest_dir)} is not the guest's recorded place")
        return cls(
            _maybe_whole(data["id"], f"{where}.id", minimum=-1, maximum=MAX_ID),
            _maybe_text(data["uuid"], f"{where}.uuid", limit=64),
            _seconds(data["began"], f"{where}.began"),
            Holder.from_json(data["holder"], f"{where}.holder"),
            tuple(FileRecord.from_json(f, f"{where}.files[{i}]", roots)
                  for i, f in enumerate(_list(data["files"], f"{where}.files"))),
            tuple(Reservation.from_json(h, f"{where}.hugepages[{i}]")
                  for i, h in enumerate(_list(data["hugepages"], f"{where}.hugepages"))),
            None if "placement" not in data else PlacementRecord.from_json(data["placement"], f"{where}.placement"),
            guest_dir,
            place,
            None if data.get("prepared") is None else _seconds(data["prepared"], f"{where}.prepared"),
            None if "at_start" not in data else AtStart.from_json(data["at_start"], f"{where}.at_start"),
        )


class StagedRecord(NamedTuple):
    """RAM files `prepin --domain` populated ahead of a guest's start, and the hugepages they hold."""

    files: tuple[FileRecord, ...]
    uuid: str | None
    staged: float
    hugepages: Reservation | None = None

    def to_json(self) -> dict[str, Any]:
        return {"files": [f.to_json() for f in self.files], "uuid": self.uuid, "staged": self.staged,
                "hugepages": None if self.hugepages is None else self.hugepages.to_json()}

    @classmethod
    def from_json(cls, value: Any, where: str, roots: Roots) -> "StagedRecord":
        data = _fields(value, where, ("files", "uuid", "staged"), ("hugepages",))
        held = data.get("hugepages")
        return cls(tuple(FileRecord.from_json(f, f"{where}.files[{i}]", roots)
                         for i, f in enumerate(_list(data["files"], f"{where}.files"))),
                   _maybe_text(data["uuid"], f"{where}.uuid", limit=64), _seconds(data["staged"], f"{where}.staged"),
                   None if held is None else Reservation.from_json(held, f"{where}.hugepages"))


def _guest_name(value: str, where: str) -> str:
    """A guest's name as a key: libvirt's rules are checked where names come in, this is the shape."""
    if not value or len(value) > 1024 or "\0" in value or "/" in value:
        raise _not(where, value, "a guest's name")
    return value


# -- records of the hugepage journal ------------------------------------------------------------


class HugepageRecord(NamedTuple):
    """An owner's reservation as the hugepage journal keeps it: the pages it added (and gives back
    at release), the pages it asked for, the boot it was made in, and a hugetlbfs it mounted."""

    owner: Owner
    page_size: int
    pages: Pages
    wanted: Pages
    boot: str | None = None  # None: written without one, taken as this boot's
    mount: str | None = None
    mount_made_dir: bool = False

    @property
    def reservation(self) -> "Reservation":
        return Reservation(self.owner, self.page_size, self.pages)

    def to_json(self) -> dict[str, Any]:
        data = {**self.reservation.to_json(), "wanted": pages_json(self.wanted)}
        if self.boot is not None:
            data["boot"] = self.boot
        if self.mount is not None:
            data.update(mount=self.mount, mount_made_dir=self.mount_made_dir)
        return data

    @classmethod
    def from_json(cls, owner: Owner, value: Any, where: str) -> "HugepageRecord":
        data = _fields(value, where, ("page_size", "pages"),
                       ("owner", "bytes", "already_held", "wanted", "boot", "mount", "mount_made_dir"))
        if data.get("owner", str(owner)) != str(owner):
            raise _not(f"{where}.owner", data["owner"], f"its key {str(owner)!r}")
        page_size = _page_size(data["page_size"], f"{where}.page_size")
        pages = _pages(data["pages"], f"{where}.pages")
        size = page_size * sum(pages.values())
        if data.get("bytes", size) != size:
            raise _not(f"{where}.bytes", data["bytes"], f"{size} (its pages times their size)")
        _flag(data.get("already_held", False), f"{where}.already_held")
        if "mount_made_dir" in data and "mount" not in data:
            raise Malformed(f"{where} has 'mount_made_dir' without a 'mount'")
        wanted = data.get("wanted")
        return cls(owner, page_size, pages, pages if wanted is None else _pages(wanted, f"{where}.wanted"),
                   _maybe_text(data.get("boot"), f"{where}.boot", limit=64),
                   _maybe_path(data.get("mount"), f"{where}.mount"),
                   _flag(data.get("mount_made_dir", False), f"{where}.mount_made_dir"))


# -- records of the bindings journal ------------------------------------------------------------


def _address(value: Any, where: str) -> str:
    """A PCI address as sysfs names it: DOMAIN:BUS:DEVICE.FUNCTION, lower-case hexadecimal."""
    hexdigits = set("0123456789abcdef")
    if isinstance(value, str) and value.count(":") == 2 and "." in value:
        domain, bus, rest = value.split(":")
        device, _, function = rest.partition(".")
        if (4 <= len(domain) <= 8 and len(bus) == 2 and len(device) == 2 and len(function) == 1
                and set(domain + bus + device) <= hexdigits and function in "01234567"):
            return value
    raise _not(where, value, "a PCI address (0000:01:00.0)")


class BindingRecord(NamedTuple):
    """A device vfiotask bound: the group, the driver and driver_override it had, the driver it
    was given, and who may still give it back itself."""

    address: str
    group: int | None
    driver: str | None
    override: str | None
    bound_to: str
    holder: Holder

    def to_json(self) -> dict[str, Any]:
        return {**self._asdict(), "holder": self.holder.to_json()}

    @classmethod
    def from_json(cls, address: str, value: Any, where: str) -> "BindingRecord":
        data = _fields(value, where, ("address", "group", "driver", "override", "bound_to", "holder"))
        if data["address"] != address:
            raise _not(f"{where}.address", data["address"], f"its key {address!r}")
        return cls(_address(address, f"{where}.address"), _maybe_whole(data["group"], f"{where}.group"),
                   _maybe_name(data["driver"], f"{where}.driver"), _maybe_name(data["override"], f"{where}.override"),
                   _name(data["bound_to"], f"{where}.bound_to"), Holder.from_json(data["holder"], f"{where}.holder"))


# -- records of the lasting journals (var/lib/vfiotask) -------------------------------------------


class TuneRecord(NamedTuple):
    """A guest definition `tune --prepared` replaced, and the digest of what it wrote (None: not yet)."""

    before: str
    after: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after}

    @classmethod
    def from_json(cls, value: Any, where: str) -> "TuneRecord":
        data = _fields(value, where, ("before", "after"))
        if not isinstance(data["before"], str) or not data["before"]:
            raise _not(f"{where}.before", data["before"], "a domain definition")
        return cls(data["before"], None if data["after"] is None else _hex(data["after"], f"{where}.after", 64))


SETUP_STEPS = ("mountpoint", "unit", "mount", "qemu.conf")


class SetupStep(NamedTuple):
    """One change `setup memory-backing` made, with what its undo needs."""

    step: str
    path: str
    link: str | None = None  # unit: the enablement link
    backup: str | None = None  # qemu.conf: where the original is kept
    before: str | None = None  # qemu.conf: digests of the file before and after
    after: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in self._asdict().items() if value is not None}

    @classmethod
    def from_json(cls, value: Any, where: str, root: str) -> "SetupStep":
        kind = _one_of(_mapping(value, where).get("step"), f"{where}.step", SETUP_STEPS)
        extra = {"unit": ("link",), "qemu.conf": ("backup", "before", "after")}.get(kind, ())
        data = _fields(value, where, ("step", "path", *extra))
        paths = {key: _under(data[key], f"{where}.{key}", root) for key in ("path", "link", "backup") if key in data}
        digests = {key: _hex(data[key], f"{where}.{key}", 64) for key in ("before", "after") if key in data}
        return cls(kind, **paths, **digests)


def _under(value: Any, where: str, root: str) -> str:
    path = _path(value, where)
    if root != "/" and not path.startswith(f"{root}/"):
        raise _not(where, value, f"a path under {root}")
    return path


class SetupRecord(NamedTuple):
    """What `setup memory-backing` applied under `root`, step by step, newest last."""

    page_size: int
    root: str
    steps: tuple[SetupStep, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"page_size": self.page_size, "root": self.root, "steps": [step.to_json() for step in self.steps]}

    @classmethod
    def from_json(cls, value: Any, where: str) -> "SetupRecord":
        data = _fields(value, where, ("page_size", "root", "steps"))
        root = _path(data["root"], f"{where}.root")
        return cls(_page_size(data["page_size"], f"{where}.page_size"), root,
                   tuple(SetupStep.from_json(step, f"{where}.steps[{i}]", root)
                         for i, step in enumerate(_list(data["steps"], f"{where}.steps"))))


# -- what each journal holds ----------------------------------------------------------------------


class Contents:
    """What a journal holds, read whole and checked; changed in place under the journal's lock.

    Each journal is a subclass: `NAME` is its file (`<NAME>.json`), `RULES` what its entries may
    be (None: it has no entries).  `intents` are the changes recorded before they were made.
    """

    NAME = ""
    RULES: Rules | None = None
    SECTIONS: tuple[str, ...] = ()

    __slots__ = ("intents",)

    def __init__(self) -> None:
        self.intents: list[Entry] = []

    @classmethod
    def from_json(cls, data: Any, roots: Roots = None) -> "Self":
        keys = (("intents",) if cls.RULES is not None else ()) + cls.SECTIONS
        _fields(data, "the journal", (), keys)
        contents = cls()
        if cls.RULES is not None and "intents" in data:
            contents.intents = _entries(data["intents"], cls.RULES.under(roots))
        contents._read(data, roots)
        return contents

    def _read(self, data: dict[str, Any], roots: Roots) -> None:
        """Read the journal's own sections (beside `intents`) from `data`."""

    def _sections(self) -> dict[str, Any]:
        """The journal's own sections as JSON, empty ones left out."""
        return {}

    def to_json(self) -> dict[str, Any]:
        data = self._sections()
        if self.intents:
            data["intents"] = [entry.to_json() for entry in self.intents]
        return data

    def entries(self, owner: Owner | None = None) -> list[Entry]:
        """The entries (of `owner`), newest first."""
        return [entry for entry in reversed(self.intents) if owner is None or entry.owner == owner]


_FS = frozenset({FILE, DIR})


class LibvirtContents(Contents):
    """`libvirt.json`: what the hook prepared per guest, what was staged per guest, and every file
    and directory made for them (under memory_backing_dir, or libvirt's default)."""

    NAME = "libvirt"
    RULES = Rules(libvirt_owner, {GUEST: _FS | {HANDOVER}, STAGING: _FS | {STAGED_PAGES}, SHARED: frozenset({DIR})})
    SECTIONS = ("guests", "staged")

    __slots__ = ("guests", "staged")

    def __init__(self) -> None:
        super().__init__()
        self.guests: dict[str, GuestRecord] = {}
        self.staged: dict[str, StagedRecord] = {}

    def _read(self, data: dict[str, Any], roots: Roots) -> None:
        self.guests = {_guest_name(name, "guests key"): GuestRecord.from_json(record, f"guests[{name!r}]", roots)
                       for name, record in _mapping(data.get("guests", {}), "guests").items()}
        self.staged = {_guest_name(name, "staged key"): StagedRecord.from_json(record, f"staged[{name!r}]", roots)
                       for name, record in _mapping(data.get("staged", {}), "staged").items()}

    def _sections(self) -> dict[str, Any]:
        if not (self.guests or self.staged or self.intents):
            return {}
        return {"guests": {name: record.to_json() for name, record in self.guests.items()},  # both, as always
                "staged": {name: record.to_json() for name, record in self.staged.items()}}


class HugepagesContents(Contents):
    """`hugepages.json`: each owner's reservation, and pool growth recorded before it is asked for."""

    NAME = "hugepages"
    RULES = Rules(hugepage_owner, {GUEST_PAGES: frozenset({POOL}), NAMED: frozenset({POOL})})
    SECTIONS = ("owners",)

    __slots__ = ("owners",)

    def __init__(self) -> None:
        super().__init__()
        self.owners: dict[Owner, HugepageRecord] = {}

    def _read(self, data: dict[str, Any], roots: Roots) -> None:
        for text, record in _mapping(data.get("owners", {}), "owners").items():
            owner = _hugepage_owner_text(text, "owners key")
            self.owners[owner] = HugepageRecord.from_json(owner, record, f"owners[{text!r}]")

    def _sections(self) -> dict[str, Any]:
        return {"owners": {str(owner): record.to_json() for owner, record in self.owners.items()}} \
            if self.owners else {}


class FilesContents(Contents):
    """`files.json`: backing files `prepin` is making (anywhere an administrator gave `--backing`)."""

    NAME = "files"
    RULES = Rules(prepin_owner, {PREPIN: frozenset({FILE})})


class PinsContents(Contents):
    """`pins.json`: memory `prepin` holds pinned, with the process holding it."""

    NAME = "pins"
    RULES = Rules(prepin_owner, {PREPIN: frozenset({PIN})})


class BindingsContents(Contents):
    """`bindings.json`: per sysfs tree (its real path), the devices bound and what they had."""

    NAME = "bindings"

    __slots__ = ("devices",)

    def __init__(self) -> None:
        super().__init__()
        self.devices: dict[str, dict[str, BindingRecord]] = {}

    @classmethod
    def from_json(cls, data: Any, roots: Roots = None) -> "Self":
        contents = cls()
        for tree, records in _mapping(data, "the journal").items():
            _path(tree, "a sysfs tree")
            contents.devices[tree] = {_address(address, f"{tree!r} key"):
                                      BindingRecord.from_json(address, record, f"{tree!r}[{address!r}]")
                                      for address, record in _mapping(records, repr(tree)).items()}
        return contents

    def to_json(self) -> dict[str, Any]:
        return {tree: {address: record.to_json() for address, record in records.items()}
                for tree, records in self.devices.items() if records}


class TuneContents(Contents):
    """`tune.json` (var/lib/vfiotask): the guest definitions `tune --prepared` replaced."""

    NAME = "tune"
    SECTIONS = ("guests",)

    __slots__ = ("guests",)

    def __init__(self) -> None:
        super().__init__()
        self.guests: dict[str, TuneRecord] = {}

    def _read(self, data: dict[str, Any], roots: Roots) -> None:
        self.guests = {_guest_name(name, "guests key"): TuneRecord.from_json(record, f"guests[{name!r}]")
                       for name, record in _mapping(data.get("guests", {}), "guests").items()}

    def _sections(self) -> dict[str, Any]:
        return {"guests": {name: record.to_json() for name, record in self.guests.items()}} if self.guests else {}


class MemoryBackingContents(Contents):
    """`memory-backing.json` (var/lib/vfiotask): what `setup memory-backing` applied."""

    NAME = "memory-backing"
    SECTIONS = ("applied",)

    __slots__ = ("applied",)

    def __init__(self) -> None:
        super().__init__()
        self.applied: SetupRecord | None = None

    def _read(self, data: dict[str, Any], roots: Roots) -> None:
        if data.get("applied") is not None:
            self.applied = SetupRecord.from_json(data["applied"], "applied")

    def _sections(self) -> dict[str, Any]:
        return {"applied": self.applied.to_json()} if self.applied is not None else {}
