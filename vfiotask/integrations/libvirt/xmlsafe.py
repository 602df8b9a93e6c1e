"""Parsing XML that arrives from outside (the hook's stdin, libvirt) without trusting it.

The stdlib parser expands internal entities, so a crafted document can blow up memory; a domain
definition never needs a DOCTYPE, so any declaration is refused before the parser sees it, and
input is capped in size so a runaway writer cannot make the hook hold gigabytes.  The check runs
on the decoded text, and the parser is handed that text (which it reads as UTF-8 whatever the
document declares), so a document in UTF-16 cannot carry a declaration past it.
"""

from __future__ import annotations

from vfiotask.errors import UsageError

TYPE_CHECKING = False  # typing itself costs the hook milliseconds on every phase
if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

MAX_XML_BYTES = 4 << 20
_DECLARATIONS = ("<!doctype", "<!entity", "<!element", "<!attlist", "<!notation")
"""Any other spelling (`<! DOCTYPE`) is not well-formed XML and fails the parse itself."""


def validated_text(data: bytes | str, *, what: str = "domain XML") -> str:
    """The document as text, once it passed every check a parse must not be trusted with."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_XML_BYTES:
        raise UsageError(
            f"{what} is larger than {MAX_XML_BYTES >> 20} MiB",
            hint="pass a libvirt domain definition, not some other file",
        )
    if not raw.strip():
        raise UsageError(f"{what} is empty", hint="give the domain definition on standard input")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})",
                         hint="pass the definition as libvirt writes it, in UTF-8") from exc
    if "\0" in text:
        raise UsageError(f"{what} contains a NUL character", hint="pass the definition as libvirt writes it, in UTF-8")
    folded = text.lower()
    if any(declaration in folded for declaration in _DECLARATIONS):
        raise UsageError(f"{what} contains a DOCTYPE or ENTITY declaration", hint="remove it; libvirt never writes one")
    return text


def parse_xml(data: bytes | str, *, what: str = "domain XML") -> ET.Element:
    """Parse a document; UsageError for anything oversized, declared, empty or malformed."""
    import xml.etree.ElementTree as ET

    text = validated_text(data, what=what)
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise UsageError(f"{what} is malformed ({exc})", hint="check that the whole definition was passed") from exc


def register_namespaces(data: bytes | str) -> None:
    """Keep the prefixes a document uses when it is written back (libvirt metadata keeps its own)."""
    import io
    import xml.etree.ElementTree as ET

    raw = data.encode() if isinstance(data, str) else data
    for _event, (prefix, uri) in ET.iterparse(io.BytesIO(raw), events=("start-ns",)):
        if prefix and not prefix.startswith("ns"):
            ET.register_namespace(prefix, uri)
