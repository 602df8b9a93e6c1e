"""Whether a domain definition is one the hook acts on, decided with expat alone.

libvirtd runs the hook on every phase of every guest and waits for it, so for the guests that
are not ours the answer must cost next to nothing: expat (a C parser, imported in well under a
millisecond) walks the document once and looks for what makes a guest ours, a PCI `<hostdev>`
under `<devices>` or vfiotask's `<config>` under `<metadata>`; ElementTree and the domain model
are imported only for guests that are ours.  The same input checks as for a full parse apply
(size, encoding, declarations, well-formedness), so bad input is refused the same way.
"""

from __future__ import annotations

from vfiotask.errors import UsageError

NAMESPACE = "https://vfiotask.org/xmlns/1"
_SEPARATOR = " "
_CONFIG = f"{NAMESPACE}{_SEPARATOR}config"


def is_ours(data: bytes | str, *, what: str = "domain XML") -> bool:
    """True when `data` has a PCI hostdev or vfiotask settings; UsageError for bad input."""
    from xml.parsers import expat

    from vfiotask.integrations.libvirt.xmlsafe import validated_text

    text = validated_text(data, what=what)
    parser = expat.ParserCreate(namespace_separator=_SEPARATOR)
    path: list[str] = []
    found = False

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal found
        path.append(name)
        if len(path) != 3 or path[0] != "domain":
            return
        if path[1] == "devices" and name == "hostdev":
            found = found or (attrs.get("mode", "subsystem") == "subsystem" and attrs.get("type") == "pci")
        elif path[1] == "metadata" and name == _CONFIG:
            found = True

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda _name: path.pop()
    try:
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        raise UsageError(f"{what} is malformed ({exc})", hint="check that the whole definition was passed") from exc
    return found


def validate_name(name: str) -> str:
    """Refuse names that could escape a directory or break a log line."""
    bad = (
        not name
        or "/" in name
        or ".." in name
        or name.startswith(".")
        or not name.isascii()
        or not name.isprintable()
    )
    if bad:
        raise UsageError(
            f"guest name {name!r} is not usable by vfiotask",
            hint="use printable ASCII without '/', '..' or a leading dot",
        )
    return name
