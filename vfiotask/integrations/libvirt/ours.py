"""Whether a domain definition is one the hook acts on, decided with expat alone.

libvirtd runs the hook on every phase of every guest and waits for it, so for the guests that
are not ours the answer must cost next to nothing: expat (a C parser, imported in well under a
millisecond) walks the document once and looks for what makes a guest ours.  A guest is ours when
it carries vfiotask's `<config>` under `<metadata>`; a guest with a PCI `<hostdev>` under
`<devices>` and file-backed RAM (`<memoryBacking><source type='file'/>`, no `<hugepages>`: what
OpenStack Nova's file_backed_memory writes) is ours too when the host's `prepare_guests` setting
says so, and only for such a guest is /etc/vfiotask/config.toml read.  ElementTree and the domain
model are imported only for guests that are ours.  The same input checks as for a full parse
apply (size, encoding, declarations, well-formedness), so bad input is refused the same way.
"""

from __future__ import annotations

from vfiotask.errors import UsageError

NAMESPACE = "https://vfiotask.org/xmlns/1"
_SEPARATOR = " "
_CONFIG = f"{NAMESPACE}{_SEPARATOR}config"


class Scan:
    """What one expat pass over a domain definition tells the hook: whether the guest is ours,
    its `<name>`, and the user and group of its DAC `<seclabel>` (libvirt adds it at `start`).
    A plain class: the hook's `start begin` needs nothing more, and no model is built for it."""

    __slots__ = ("dac", "file_source", "hugepages", "metadata", "name", "pci_hostdev")

    def __init__(self) -> None:
        self.metadata = False  # <vfiotask:config> under <metadata>
        self.pci_hostdev = False
        self.file_source = False  # <memoryBacking><source type='file'/>
        self.hugepages = False  # <memoryBacking><hugepages>
        self.name: str | None = None
        self.dac: tuple[str, str] | None = None

    @property
    def passthrough_file_backed(self) -> bool:
        """A PCI guest whose RAM is a file QEMU opens: ours only if `prepare_guests` takes it."""
        return self.pci_hostdev and self.file_source and not self.hugepages

    @property
    def ours(self) -> bool:
        """Whether the hook prepares this guest; reads config.toml only for a guest the host's
        policy decides (see `policy_takes_passthrough`)."""
        return self.metadata or (self.passthrough_file_backed and policy_takes_passthrough())


def policy_takes_passthrough() -> bool:
    """Whether config.toml's `prepare_guests` has the hook prepare PCI guests with file-backed RAM
    that carry no vfiotask metadata.  A broken file is refused (UsageError), never taken as a no."""
    from vfiotask.config import FILE_BACKED_PASSTHROUGH, get

    return bool(get("prepare_guests") == FILE_BACKED_PASSTHROUGH)


def scan(data: bytes | str, *, what: str = "domain XML") -> Scan:
    """One pass of expat over `data`; UsageError for bad input, as a full parse would give."""
    from xml.parsers import expat

    from vfiotask.integrations.libvirt.xmlsafe import validated_text

    text = validated_text(data, what=what)
    parser = expat.ParserCreate(namespace_separator=_SEPARATOR)
    found = Scan()
    path: list[str] = []
    texts: list[str] = []
    dac_seclabel = [False]
    backings = [0]  # <memoryBacking> elements seen: the domain model reads the first only, and so does this
    source_seen = [False]  # its first <source> decides, as in the model

    def start(name: str, attrs: dict[str, str]) -> None:
        namespace, _, local = name.rpartition(_SEPARATOR)
        shown = f"{{{namespace}}}{local}" if namespace else local
        if not path and name != "domain":  # as the full parse refuses it: never "not ours"
            raise UsageError(f"the XML's root element is <{shown}>, not <domain>", hint="pass a domain definition")
        if path == ["domain", "name"]:
            raise name_with_element(shown)
        path.append(name)
        texts.clear()
        if len(path) == 2 and path[0] == "domain" and name == "seclabel":
            dac_seclabel[0] = attrs.get("model") == "dac" and found.dac is None
        elif len(path) == 2 and path[0] == "domain" and name == "memoryBacking":
            backings[0] += 1
        if len(path) != 3 or path[0] != "domain":
            return
        if path[1] == "devices" and name == "hostdev":
            if attrs.get("mode", "subsystem") == "subsystem" and attrs.get("type") == "pci":
                found.pci_hostdev = True
        elif path[1] == "metadata" and name == _CONFIG:
            found.metadata = True
        elif path[1] == "memoryBacking" and name == "source" and backings[0] == 1 and not source_seen[0]:
            found.file_source = attrs.get("type") == "file"
            source_seen[0] = True
        elif path[1] == "memoryBacking" and name == "hugepages" and backings[0] == 1:
            found.hugepages = True

    def end(name: str) -> None:
        content = "".join(texts).strip()
        if path == ["domain", "name"] and found.name is None:
            found.name = content
        elif path == ["domain", "seclabel", "label"] and dac_seclabel[0] and ":" in content:
            user, _, group = content.partition(":")
            found.dac = (user, group)
        path.pop()
        texts.clear()

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = texts.append
    try:
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        raise UsageError(f"{what} is malformed ({exc})", hint="check that the whole definition was passed") from exc
    return found


def name_with_element(child: str) -> UsageError:
    """`<name>` holding an element is refused by both readers of the definition: expat (this scan)
    and ElementTree (the domain model) would each take a different part of its text for the name,
    and the hook would check one guest and act on another."""
    return UsageError(f"the domain's <name> holds an element <{child}>; a name is text only",
                      hint="pass the definition as libvirt writes it")


def is_ours(data: bytes | str, *, what: str = "domain XML") -> bool:
    """True when the hook prepares the guest `data` defines (see Scan.ours); UsageError for bad input."""
    return scan(data, what=what).ours


MAX_NAME = 200  # libvirt keeps NAME.xml, NAME.pid, NAME.log: a file name holds 255 bytes


def validate_name(name: str) -> str:
    """Refuse names that could escape a directory, break a log line or not fit a file name."""
    bad = (
        not name
        or len(name) > MAX_NAME
        or "/" in name
        or ".." in name
        or name.startswith(".")
        or not name.isascii()
        or not name.isprintable()
    )
    if bad:
        raise UsageError(
            f"guest name {name!r} is not usable by vfiotask",
            hint=f"use at most {MAX_NAME} printable ASCII characters without '/', '..' or a leading dot",
        )
    return name
