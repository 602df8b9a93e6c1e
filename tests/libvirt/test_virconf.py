"""libvirt's conf grammar (src/util/virconf.c) as vfiotask reads qemu.conf: what libvirtd accepts
is read to the same values, what it refuses is one error naming the line."""

from __future__ import annotations

import pytest

from vfiotask.errors import HostStateError
from vfiotask.integrations.libvirt.virconf import parse, settings


@pytest.mark.parametrize(("text", "expected"), [
    ("", {}),
    ("\n\n  \n", {}),
    ("# only a comment", {}),
    ("a=1", {"a": 1}),
    ("  a = -12  ", {"a": -12}),
    ("a = '/x'  # a comment after the value\n", {"a": "/x"}),
    ('a = "it\'s" ; b = \'say "x"\'\n', {"a": "it's", "b": 'say "x"'}),
    ('a = """two\nlines"""\n', {"a": "two\nlines"}),
    ("a = [\n  1,\n  'x',\n]\n", {"a": [1, "x"]}),
    ("a = [ ]\n", {"a": []}),
    ("a = [ [1], [2, 3] ]\n", {"a": [[1], [2, 3]]}),
    ("a = 1\r\nb = 2\r\n", {"a": 1, "b": 2}),
    ('a = "first"\na = "second"\n', {"a": "first"}),
    ("with_digits_2 = 3\n", {"with_digits_2": 3}),
])
def test_what_libvirt_accepts(text: str, expected: dict[str, object]) -> None:
    assert settings(parse(text, "q.conf")) == expected


@pytest.mark.parametrize(("text", "line", "what"), [
    ('a = "open\n', 1, "unterminated string"),
    ("a = 'x\ny'\n", 1, "unterminated string"),
    ("\n\na = 1 b\n", 3, "expecting a separator"),
    ("a = [\n 1 # no comments in a list\n]\n", 2, "a comment cannot be here"),
    ("a = [1 2]\n", 1, "expecting ','"),
    ("a = [1,\n", 2, "expecting a value"),
    ("a = [1\n", 1, "list is not closed"),
    ("a = yes\n", 1, "not 'yes'"),
    ("a =\n1\n", 1, "cannot go on past the end of its line"),
    ("a\n= 1\n", 1, "cannot go on past the end of its line"),
    ("2a = 1\n", 1, "expecting a name"),
    ("a.b = 1\n", 1, "expecting '=' after a"),
    ("a = 12345678901234567890\n", 1, "is too large"),
    ("a = 1\n# ok\nb = '\0'\n", 3, "a NUL byte"),
])
def test_what_libvirt_refuses(text: str, line: int, what: str) -> None:
    with pytest.raises(HostStateError) as caught:
        parse(text, "q.conf")
    assert caught.value.message.startswith(f"q.conf:{line}: ") and what in caught.value.message, caught.value.message


def test_each_statement_knows_its_lines() -> None:
    entries = parse('# c\na = 1\nb = [\n  "x",\n]\nc = """\n\n"""; d = 4\n', "q.conf")
    assert [(e.name, e.first_line, e.last_line) for e in entries] == [
        ("a", 2, 2), ("b", 3, 5), ("c", 6, 8), ("d", 8, 8)]
