"""libvirt-python, behind errors that say what to do.

Only the command line uses this (prepin --domain, tune, the benchmark); the hook never does,
because libvirtd is blocked waiting for the hook and a call back into it would deadlock.
"""

from __future__ import annotations

import contextlib
from typing import Any

from vfiotask.errors import HostStateError, UsageError

URI = "qemu:///system"


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError as exc:
        raise HostStateError(
            "libvirt-python is not installed", hint="pip install 'vfiotask[libvirt]' (needs libvirt-dev, pkg-config)"
        ) from exc
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors come back as exceptions
    return libvirt


def open_connection(uri: str = URI, *, readonly: bool = True) -> Any:
    libvirt = _libvirt()
    try:
        return libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise HostStateError(
            f"cannot connect to libvirt at {uri}: {exc.get_error_message()}",
            hint="start libvirtd (or virtqemud), and run as root or a member of the libvirt group",
        ) from exc


def lookup(conn: Any, name: str) -> Any:
    libvirt = _libvirt()
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise UsageError(f"no libvirt domain named {name!r}", hint="see 'virsh list --all'") from exc
        raise _failed(f"looking up domain {name!r}", exc) from exc


def _failed(what: str, exc: Any) -> HostStateError:
    """libvirtd went away or refused a read mid-command (a dropped socket, a restart): one line."""
    return HostStateError(f"{what} failed: {exc.get_error_message() or exc}",
                          hint="check libvirtd (systemctl status libvirtd) and run the command again")


def inactive_xml(domain: Any) -> str:
    """The persistent definition, as the next start will use it."""
    libvirt = _libvirt()
    try:
        xml: str = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    except libvirt.libvirtError as exc:
        raise _failed(f"reading the definition of {domain.name()!r}", exc) from exc
    return xml


def is_active(domain: Any) -> bool:
    libvirt = _libvirt()
    try:
        return bool(domain.isActive())
    except libvirt.libvirtError as exc:
        raise _failed(f"asking libvirt whether {domain.name()!r} runs", exc) from exc


def close(conn: Any) -> None:
    """Close a connection that may have dropped: a dead socket fails to close, and that must not
    hide the error that ended the command (nothing is left open either way)."""
    libvirt = _libvirt()
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


def define(conn: Any, xml: str) -> None:
    libvirt = _libvirt()
    try:
        conn.defineXML(xml)
    except libvirt.libvirtError as exc:
        raise UsageError(f"libvirt refused the new definition: {exc.get_error_message()}",
                         hint="nothing was changed; report this with the diff shown") from exc
