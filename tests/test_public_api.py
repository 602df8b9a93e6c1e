"""The library's public API: every exported name resolves, and importing the package stays cheap."""

from __future__ import annotations

import subprocess
import sys

import vfiotask


def test_every_exported_name_resolves() -> None:
    for name in vfiotask.__all__:
        assert getattr(vfiotask, name) is not None, name


def test_importing_the_package_loads_no_engine_or_jobs() -> None:
    """The libvirt hook imports vfiotask for every phase of every guest; it must stay light."""
    code = "import sys, vfiotask; print(sorted(m for m in sys.modules if m.startswith('vfiotask.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for heavy in ("vfiotask.engine", "vfiotask.jobs", "vfiotask.memory", "vfiotask.devices"):
        assert f"'{heavy}" not in loaded, loaded


def test_unknown_names_raise_attribute_error() -> None:
    try:
        vfiotask.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
