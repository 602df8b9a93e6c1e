"""libvirt's configuration format (qemu.conf), read the way libvirtd reads it.

libvirt reads its .conf files with a small parser of its own (src/util/virconf.c), and vfiotask
must find the same values in them, or the hook prepares a guest's RAM where QEMU will not look.
The subset libvirt accepts, and so this module:
  - statements `name = value`, separated by line ends or `;`; a name is ASCII letters, digits
    and `_`, starting with a letter; blanks are spaces and tabs;
  - a value is a string in double or single quotes (no line end inside), a string in triple
    double quotes (line ends allowed), a whole number with an optional sign, or a list
    `[ value, value, ]` that may run over several lines (a trailing comma is allowed);
  - `#` starts a comment at the start of a statement or after its value, never inside a list;
  - a name set twice keeps its first value (virConfGetValue stops at the first).
A file libvirtd would refuse is refused here, naming the file and line, so that neither the hook
nor `setup memory-backing` acts on what libvirtd itself cannot read.  The file is opened without
blocking and must be a regular file (a FIFO planted at the path must not hang the hook), of at most
libvirt's own 10 MiB.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import NamedTuple, TypeAlias

from vfiotask.errors import HostStateError, describe_exception

MAX_CONF_BYTES = 10 << 20  # virconf.c: MAX_CONFIG_FILE_SIZE
MAX_NUMBER_DIGITS = 19  # a long long, as libvirt keeps numbers

Value: TypeAlias = "str | int | list[Value]"

# Blanks, line ends and comments come as one "gap" token: most of a qemu.conf is comments, and the
# hook reads the file on every prepare.  Where a gap may hold a line end or a comment is the
# parser's to check (only blanks around `=`, no comment inside a list).
_TOKEN = re.compile(r"""
      (?P<gap>(?:[ \t]+|\r|\n|\#[^\r\n]*)+)
    | \"\"\"(?P<triple>.*?)\"\"\"
    | "(?P<double>[^"\r\n]*)"
    | '(?P<single>[^'\r\n]*)'
    | (?P<number>[-+]?[0-9]+)
    | (?P<name>[A-Za-z][A-Za-z0-9_]*)
    | (?P<punct>[=;,\[\]])
    | (?P<other>.)
""", re.VERBOSE | re.DOTALL)
_STRINGS = ("triple", "double", "single")


class Entry(NamedTuple):
    """One `name = value` statement and the lines it spans (1-based, inclusive)."""

    name: str
    value: Value
    first_line: int
    last_line: int


class _Parser:
    """Recursive descent over the tokens (kind, text, start, end), as virconf.c reads its input."""

    def __init__(self, text: str, where: str) -> None:
        self.text = text
        self.where = where
        self.tokens = self._tokens()
        self.i = 0

    def line(self, position: int) -> int:
        return self.text.count("\n", 0, position) + 1

    def error(self, position: int, what: str) -> HostStateError:
        return HostStateError(f"{self.where}:{self.line(position)}: {what}",
                              hint="fix that line: libvirtd cannot read the file as it is either")

    def _tokens(self) -> list[tuple[str, str, int, int]]:
        found: list[tuple[str, str, int, int]] = []
        position, size = 0, len(self.text)
        match_at = _TOKEN.match
        while position < size:
            match = match_at(self.text, position)
            assert match is not None  # `other` takes any character the rest do not
            kind = match.lastgroup or ""  # each alternative has one group: it names the token
            found.append((kind, match.group(kind), position, match.end()))
            position = match.end()
        return found

    def kind(self, text: str | None = None) -> str | None:
        """The next token's kind (None at the end); with `text`, only a token with that text counts."""
        if self.i >= len(self.tokens):
            return None
        token = self.tokens[self.i]
        return token[0] if text is None or token[1] == text else ""

    def here(self) -> int:
        return self.tokens[self.i][2] if self.i < len(self.tokens) else len(self.text)

    def gap(self, *, line_ends: bool, comments: bool) -> None:
        """Step over a gap, if there is one; a line end or comment where none may be is an error."""
        if self.kind() != "gap":
            return
        text = self.tokens[self.i][1]
        if "#" in text and not comments:
            raise self.error(self.here() + text.index("#"), "a comment cannot be here (not inside a list)")
        if ("\n" in text or "\r" in text) and not line_ends:
            raise self.error(self.here(), "a statement cannot go on past the end of its line here")
        self.i += 1

    def entries(self) -> list[Entry]:
        found: list[Entry] = []
        while True:
            self.gap(line_ends=True, comments=True)
            if self.kind() is None:
                return found
            found.append(self.statement())
            ended = self.kind() is None or "\n" in self.tokens[self.i - 1][1] or "\r" in self.tokens[self.i - 1][1]
            if self.kind() is None:
                return found
            if self.kind(";") == "punct":
                self.i += 1
            elif not (ended and self.tokens[self.i - 1][0] == "gap"):
                raise self.error(self.here(), "expecting a separator (a new line or ';')")

    def statement(self) -> Entry:
        if self.kind() != "name":
            raise self.error(self.here(), "expecting a name")
        name, start = self.tokens[self.i][1], self.here()
        self.i += 1
        self.gap(line_ends=False, comments=False)
        if self.kind("=") != "punct":
            raise self.error(self.here(), f"expecting '=' after {name}")
        self.i += 1
        self.gap(line_ends=False, comments=False)
        value = self.value()
        last = self.tokens[self.i - 1][3] - 1
        self.gap(line_ends=True, comments=True)  # blanks, a comment to the end of the line, the line end
        return Entry(name, value, self.line(start), self.line(last))

    def value(self) -> Value:
        kind = self.kind()
        if kind in _STRINGS:
            self.i += 1
            return self.tokens[self.i - 1][1]
        if kind == "number":
            text = self.tokens[self.i][1]
            if len(text.lstrip("+-")) > MAX_NUMBER_DIGITS:
                raise self.error(self.here(), f"number {text[:24]}... is too large")
            self.i += 1
            return int(text)
        if kind == "punct" and self.kind("[") == "punct":
            return self.items()
        if kind == "other" and self.tokens[self.i][1] in "\"'":
            raise self.error(self.here(), "unterminated string")
        found = f", not {self.tokens[self.i][1][:16]!r}" if kind is not None and kind != "gap" else ""
        raise self.error(self.here(), f"expecting a value (a quoted string, a number or a [list]){found}")

    def items(self) -> list[Value]:
        opened = self.here()
        self.i += 1
        found: list[Value] = []
        self.gap(line_ends=True, comments=False)
        if self.kind() is not None and self.kind("]") != "punct":
            found.append(self.value())
            self.gap(line_ends=True, comments=False)
        while self.kind() is not None and self.kind("]") != "punct":
            if self.kind(",") != "punct":
                raise self.error(self.here(), "expecting ',' between the values of a list")
            self.i += 1
            self.gap(line_ends=True, comments=False)
            if self.kind("]") == "punct":
                break
            found.append(self.value())
            self.gap(line_ends=True, comments=False)
        if self.kind("]") != "punct":
            raise self.error(opened, "list is not closed with ]")
        self.i += 1
        return found


def parse(text: str, where: str) -> list[Entry]:
    """Every statement of `text` in order; HostStateError naming `where` and the line otherwise."""
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise HostStateError(f"{where}:{line}: a NUL byte", hint="fix that line: this is not a libvirt configuration")
    return _Parser(text, where).entries()


def settings(entries: list[Entry]) -> dict[str, Value]:
    """Each name's value as libvirt takes it: the first statement that sets it."""
    found: dict[str, Value] = {}
    for entry in entries:
        found.setdefault(entry.name, entry.value)
    return found


def read_text(path: Path) -> str | None:
    """The file's text, None when there is none; one descriptor, not blocking, a regular file,
    capped.  Bytes that are not UTF-8 (libvirt reads bytes) are kept as surrogate escapes, so the
    file is written back as it was."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostStateError(f"cannot read {path}: {describe_exception(exc)}", hint="check its permissions") from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise HostStateError(f"{path} is not a regular file", hint="make it the libvirt configuration file")
        try:
            data = handle.read(MAX_CONF_BYTES + 1)
        except OSError as exc:
            raise HostStateError(f"cannot read {path}: {describe_exception(exc)}", hint="check the file") from exc
    if len(data) > MAX_CONF_BYTES:
        raise HostStateError(f"{path} is larger than {MAX_CONF_BYTES >> 20} MiB (libvirtd refuses it too)",
                             hint="give the libvirt configuration file")
    return data.decode("utf-8", "surrogateescape")


def read(path: Path) -> dict[str, Value] | None:
    """The settings of the file at `path` (see `settings`), None when there is no file."""
    text = read_text(path)
    return None if text is None else settings(parse(text, str(path)))
