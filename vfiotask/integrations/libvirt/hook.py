"""The libvirt qemu hook: `HOOK NAME PHASE SUBPHASE EXTRA`, the domain XML on stdin.

libvirtd waits for the hook on every phase of every guest, so what it imports is what the phase
needs and nothing more: phases with nothing to do leave after reading argv; for a guest that is
not ours expat alone decides (`ours.scan`; config.toml is read only for a PCI guest with
file-backed RAM and no vfiotask metadata, which its `prepare_guests` decides on); the domain
model, the journal and the memory code are imported only for a guest that is ours, and the jobs
only when there is work.  The installed hook starts Python with `-I -S` (no site processing, a
fixed sys.path), see `vfiotask.integrations.libvirt.hookinstall`.  The hook never writes to
stdout (in qemu.d the output of one script can be the input of the next), never calls libvirt
(libvirtd is blocked on us), logs to syslog, and prints one line on stderr when it fails a
start: libvirt shows that line to the user who ran `virsh start`.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing itself costs the hook milliseconds on every phase
if TYPE_CHECKING:
    from typing import IO

KNOWN_PHASES = {"prepare", "start", "started", "stopped", "release", "migrate", "restore", "reconnect", "attach"}
WORK = {("start", "begin"), ("release", "end")}  # everything else ends here (and in the shim, before Python)
EXIT_OK = 0
EXIT_FAILED = 1
IDENT = "vfiotask-hook"


def log(message: str) -> None:
    """To syslog when there is one; quietly nowhere when /dev/log is absent."""
    import syslog

    syslog.openlog(IDENT, syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_INFO, message)


def fail(message: str) -> int:
    line = " ".join(message.split())
    print(f"vfiotask: {line}", file=sys.stderr)
    log(f"error: {line}")
    return EXIT_FAILED


def read_stdin(stream: IO[bytes] | None) -> bytes:
    """The XML libvirt writes, capped one byte past the parser's limit (so oversize is detected)."""
    from vfiotask.integrations.libvirt.xmlsafe import MAX_XML_BYTES

    if stream is None or stream.isatty():
        return b""
    return stream.read(MAX_XML_BYTES + 1)


def main(argv: list[str] | None = None, stdin: IO[bytes] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 4:
        return fail("the qemu hook expects NAME PHASE SUBPHASE EXTRA from libvirtd; nothing done")
    name, phase, subphase = argv[1], argv[2], argv[3]
    if phase not in KNOWN_PHASES:
        log(f"{name!r}: phase {phase!r} {subphase!r} is not one vfiotask knows; ignored")
        return EXIT_OK
    work = (phase, subphase)
    if work not in WORK:
        return EXIT_OK
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing may reach libvirt's stdout pipe
    if stdin is None:
        stdin = sys.stdin.buffer if sys.stdin is not None else None
    try:
        if work == ("release", "end"):
            return run_release(name)
        return run_start(name, read_stdin(stdin))
    except KeyboardInterrupt:
        return fail(f"guest {name}: interrupted; everything taken was given back")


def run_start(name: str, data: bytes) -> int:
    """`start begin`: libvirt's last call before QEMU runs, with the whole definition and QEMU's
    DAC label; expat alone decides whether the guest is ours, the domain model is built only then."""
    from vfiotask.errors import VfiotaskError
    from vfiotask.integrations.libvirt.ours import scan, validate_name

    try:
        found = scan(data)
        if not found.ours:
            return EXIT_OK
        from vfiotask.integrations.libvirt.domain import parse_domain

        domain = parse_domain(data)
    except VfiotaskError as exc:
        return fail(f"guest {name} start: {exc.one_line()}")
    try:
        validate_name(name)
        if found.name != name or domain.name != name:
            shown = found.name if found.name != name else domain.name
            return fail(f"guest {name}: the XML on stdin is for {shown!r}; nothing done")
        if domain.id is None:
            return fail(f"guest {name}: the XML has no id attribute; nothing done")
        from vfiotask import testpoints  # the journal imports it anyway: no extra module
        from vfiotask.integrations.libvirt import phases

        if testpoints.requested(os.environ):  # the hook run by hand: libvirtd passes no such variable
            from vfiotask.faultinjection import from_environment

            from_environment()
        phases.prepare(domain, phases.HookContext(log=log))
        from vfiotask.integrations.libvirt.domain import SOURCE_POLICY

        by_policy = " by prepare_guests, with the settings of [defaults]" \
            if domain.config.source == SOURCE_POLICY else ""
        log(f"{name}: prepared{by_policy} and handed to QEMU")
    except VfiotaskError as exc:
        return fail(f"guest {name}: {exc.one_line()}")
    except Exception as exc:  # a bug: libvirt still gets one line, syslog gets the traceback
        import traceback

        from vfiotask.errors import describe_exception

        log(f"{name}: start failed unexpectedly:\n{traceback.format_exc()}")
        return fail(f"guest {name}: start failed unexpectedly ({describe_exception(exc)}); "
                    "details are in syslog under vfiotask-hook")
    return EXIT_OK


def run_release(name: str) -> int:
    """Undo what prepare did; any problem is logged and the stop goes on (exit 0)."""
    from vfiotask.errors import VfiotaskError, describe_exception
    from vfiotask.integrations.libvirt.ours import validate_name

    try:
        validate_name(name)
        if not _holds_anything(name):
            return EXIT_OK
        from vfiotask.integrations.libvirt import phases

        for problem in phases.release(name, phases.HookContext(log=log)):
            log(f"{name}: release: {problem}")
    except VfiotaskError as exc:
        log(f"{name}: release: {exc.one_line()}")
    except Exception as exc:  # the stop must never fail because of us
        log(f"{name}: release failed: {describe_exception(exc)}")
    return EXIT_OK


def _holds_anything(name: str) -> bool:
    """Whether the journals list anything for `name`: read without importing the jobs (fast path).
    Owners are compared whole: guest `vm:1`'s hugepages are not guest `vm`'s."""
    from vfiotask.integrations.libvirt.guestjournal import GuestJournal
    from vfiotask.journal import Journal
    from vfiotask.journalrecords import GUEST_PAGES, HugepagesContents, guest_owner

    guests = GuestJournal().read()
    if name in guests.guests or guests.entries(guest_owner(name)):
        return True
    hugepages = Journal(HugepagesContents).read()
    owners = [*hugepages.owners, *(entry.owner for entry in hugepages.intents)]
    return any(owner.role == GUEST_PAGES and owner.name == name for owner in owners)
