"""Hostile domain definitions for the hook, generated at test time (the large ones are never stored).

Every document is built from one guest that the hook would prepare (file-backed, with
vfiotask's metadata), so a document that slipped through would leave a RAM file behind, and
"nothing changed" is a real check.  Each entry: (id, guest name in argv, XML bytes, words the
one-line refusal must contain).
"""

from __future__ import annotations

from tests.libvirt.xmls import guest_xml

NAME = "hostile"
MIB = 16
BILLION_LAUGHS_DTD = (
    '<!DOCTYPE domain [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
    '<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">'
    '<!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;"><!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;">'
    '<!ENTITY i "&h;&h;&h;&h;&h;&h;&h;&h;&h;&h;">]>'
)
EXTERNAL_DTD = '<!DOCTYPE domain [<!ENTITY x SYSTEM "file:///etc/shadow">]>'


def good(name: str = NAME, memory_mib: int = MIB, **kwargs: object) -> str:
    return guest_xml(name, memory_mib, id=3, file_backed=True, config={}, **kwargs)  # type: ignore[arg-type]


def _with_memory(text: str, unit: str = "MiB") -> bytes:
    return good().replace(f"<memory unit='MiB'>{MIB}</memory>", f"<memory unit='{unit}'>{text}</memory>").encode()


def _with_name(name: str) -> bytes:
    return good().replace(f"<name>{NAME}</name>", f"<name>{name}</name>").encode()


def _entity(dtd: str, use: str, encoding: str, bom: bool) -> bytes:
    body = good().replace(f"<name>{NAME}</name>", f"<name>{NAME}{use}</name>")
    text = f"<?xml version='1.0' encoding='{encoding}'?>\n{dtd}\n{body}"
    data = text.encode(encoding)
    if bom:
        data = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff", "utf-32-le": b"\xff\xfe\x00\x00",
                "utf-32-be": b"\x00\x00\xfe\xff", "utf-8": b"\xef\xbb\xbf"}[encoding] + data
    return data


def _deep(depth: int) -> bytes:
    return good().replace("<devices>", "<devices>" + "<x>" * depth + "</x>" * depth).encode()


def _wrong_namespace() -> bytes:
    return good().replace("<domain type='kvm'", "<domain xmlns='https://example.org/not-libvirt' type='kvm'").encode()


def _large(total: int) -> bytes:
    filler = "<!-- " + "x" * 1000 + " -->\n"
    return good().replace("<devices>", "<devices>" + filler * (total // len(filler))).encode()


def hostile_xml() -> list[tuple[str, str, bytes, tuple[str, ...]]]:
    """Documents the hook must refuse at `prepare begin` with one line, changing nothing."""
    whole = good().encode()
    cases: list[tuple[str, str, bytes, tuple[str, ...]]] = [
        ("empty", NAME, b"", ("empty",)),
        ("blank", NAME, b"  \n\t\n", ("empty",)),
        ("not-xml", NAME, b"this is not xml at all", ("malformed",)),
        ("binary", NAME, bytes(range(256)) * 4, ()),
        ("nul", NAME, whole.replace(b"<vcpu>", b"<vcpu>\0"), ("NUL",)),
        ("unclosed", NAME, whole.replace(b"</domain>", b""), ("malformed",)),
        ("two-roots", NAME, whole + whole, ("malformed",)),
        ("root-not-domain", NAME, whole.replace(b"<domain", b"<network").replace(b"</domain>", b"</network>"),
         ("<network>",)),
        ("bad-char-ref", NAME, whole.replace(b"<vcpu>1", b"<vcpu>&#0;1"), ("malformed",)),
        ("undefined-entity", NAME, whole.replace(b"<vcpu>1", b"<vcpu>&lol;1"), ("malformed",)),
        ("latin1", NAME, whole.replace(b"<vcpu>", b"<vcpu>\xe9"), ("not UTF-8",)),
        ("large-50M", NAME, _large(50 << 20), ("larger than",)),
        ("large-just-over-cap", NAME, _large((4 << 20) + 4096), ("larger than",)),
        ("deep-nesting", NAME, _deep(200_000), ()),
        ("wrong-namespace", NAME, _wrong_namespace(), ("not <domain>",)),
        ("memory-zero", NAME, _with_memory("0"), ("<memory>",)),
        ("memory-negative", NAME, _with_memory("-16"), ("<memory>",)),
        ("memory-huge", NAME, _with_memory("9" * 30), ("<memory>",)),
        ("memory-huge-unit", NAME, _with_memory("99999999", "EiB"), ("<memory>",)),
        ("memory-exabytes", NAME, _with_memory("16", "EiB"), ("<memory>",)),
        ("memory-400-digits", NAME, _with_memory("1" + "0" * 400), ("<memory>",)),
        ("memory-fullwidth-digits", NAME, _with_memory("１６"), ("<memory>",)),
        ("memory-arabic-digits", NAME, _with_memory("١٦"), ("<memory>",)),
        ("memory-superscript", NAME, _with_memory("1²"), ("<memory>",)),
        ("memory-fraction", NAME, _with_memory("1.5"), ("<memory>",)),
        ("memory-hex", NAME, _with_memory("0x10"), ("<memory>",)),
        ("memory-empty", NAME, _with_memory(""), ("<memory>",)),
        ("memory-unit-unknown", NAME, _with_memory("16", "parsecs"), ("unit",)),
        ("page-size-zero", NAME, good(hugepages="0").encode(), ("hugepage size",)),
        ("page-size-negative", NAME, good(hugepages="-2048").encode(), ("hugepage size",)),
        ("page-size-fullwidth", NAME, good(hugepages="２０４８").encode(), ("hugepage size",)),
        ("page-size-not-power-of-two", NAME, good(hugepages="3000").encode(), ("hugepage size",)),
        ("name-slash", "a/b", _with_name("a/b"), ("not usable",)),
        ("name-dotdot", "..", _with_name(".."), ("not usable",)),
        ("name-dot-slash-dotdot", "../../etc", _with_name("../../etc"), ("not usable",)),
        ("name-newline", "a\nb", _with_name("a\nb"), ("not usable",)),
        ("name-300", "n" * 300, _with_name("n" * 300), ("not usable",)),
        ("name-non-ascii", "gäst", _with_name("gäst"), ("not usable",)),
        ("name-mismatch", "other", whole, ("is for",)),
        ("no-id", NAME, whole.replace(b' id="3"', b""), ("no id",)),
        ("id-fullwidth", NAME, whole.replace(b' id="3"', ' id="３"'.encode()), ("domain id",)),
        ("id-huge", NAME, whole.replace(b' id="3"', b' id="' + b"9" * 400 + b'"'), ("domain id",)),
        ("threads-fullwidth", NAME, good().replace("<vfiotask:config ", "<vfiotask:config threads='２' ").encode(),
         ("threads",)),
        ("threads-400-digits", NAME,
         good().replace("<vfiotask:config ", "<vfiotask:config threads='" + "9" * 400 + "' ").encode(),
         ("threads",)),
        ("fail-5001-digits", NAME,
         good().replace("<vfiotask:config ", "<vfiotask:config fail='prefault:" + "9" * 5001 + "' ").encode(),
         ("vfiotask:config fail",)),
        ("hostdev-bad-address", NAME,
         good(hostdevs=["0000:01:00.0"]).replace("bus='0x01'", "bus='0xzz'").encode(), ("address",)),
        ("hostdev-huge-address", NAME,
         good(hostdevs=["0000:01:00.0"]).replace("bus='0x01'", "bus='0x" + "f" * 400 + "'").encode(), ("address",)),
    ]
    for encoding in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "utf-8"):
        for bom in (True, False):
            tag = f"{encoding}{'-bom' if bom else ''}"
            cases.append((f"billion-laughs-{tag}", NAME, _entity(BILLION_LAUGHS_DTD, "&i;", encoding, bom), ()))
            cases.append((f"external-entity-{tag}", NAME, _entity(EXTERNAL_DTD, "&x;", encoding, bom), ()))
    cases.append(("doctype-only", NAME, ("<!DOCTYPE domain>\n" + good()).encode(), ("DOCTYPE",)))
    cases.append(("doctype-lowercase", NAME, ("<!doctype domain>\n" + good()).encode(), ("DOCTYPE",)))
    cut = len(whole)
    for fraction in (1, 2, 3, 5, 8, 13):
        cases.append((f"truncated-{fraction}", NAME, whole[: cut * fraction // 16], ()))
    return cases
