"""What the tests use to fail runs on purpose: the fault_injection config, and crash points.

vfiotask fills its test points (`vfiotask.testpoints`) only where root's config sets
`fault_injection = true`, and then only with chunk failures; it holds no code that kills itself.
The processes the tests start get both from here: `fault_injection_config` writes a config file
that turns fault injection on (handed over in VFIOTASK_CONFIG, or written to
/etc/vfiotask/config.toml by `etc_config` for the hook under a real libvirtd), and `crash_at`
is the environment that makes a Python process SIGKILL itself at its K-th crash point, through
crashsite/sitecustomize.py on PYTHONPATH.  In-process tests use the `inject_faults` fixture.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CRASH_SITE = Path(__file__).resolve().parent / "crashsite"
FAULTS_ON = "fault_injection = true\n"
ETC_CONFIG = Path("/etc/vfiotask/config.toml")


TRUSTED_CONFIGS = Path("/run/vfiotask-test-configs")  # removed at the session's end (tests/conftest.py)


def fault_injection_config(directory: Path) -> Path:
    """A config file that turns fault injection on (and leaves every other default).

    Root reads a config file only where root alone can change it, and a test's `directory` lies
    below /tmp: as root the file goes to a directory of its own under /run instead."""
    if os.geteuid() == 0:
        import tempfile

        TRUSTED_CONFIGS.mkdir(mode=0o755, exist_ok=True)
        directory = Path(tempfile.mkdtemp(dir=TRUSTED_CONFIGS))
        directory.chmod(0o755)
    path = directory / "fault-injection.toml"
    path.write_text(FAULTS_ON)
    return path


def faults_on(directory: Path, **variables: str) -> dict[str, str]:
    """The environment of a command run with fault injection on: VFIOTASK_CONFIG and `variables`."""
    return {"VFIOTASK_CONFIG": str(fault_injection_config(directory)), **variables}


def crash_at(point: int, directory: Path) -> dict[str, str]:
    """The environment that makes a Python process SIGKILL itself at its `point`-th crash point:
    the crash points (crashsite/sitecustomize.py, on PYTHONPATH), the count, and a config with
    fault injection on (the command and the hook refuse VFIOTASK_CRASH_AT without it)."""
    paths = [str(CRASH_SITE), *filter(None, [os.environ.get("PYTHONPATH")])]
    return faults_on(directory, VFIOTASK_CRASH_AT=str(point), PYTHONPATH=os.pathsep.join(paths))


@contextmanager
def etc_config(text: str) -> Iterator[None]:
    """/etc/vfiotask/config.toml holds `text` for the block, for the hook under libvirtd (which
    passes it no VFIOTASK_CONFIG); then the file, and the directory if the block made it, are as
    they were.  Take the host lock around it: every vfiotask on the host reads that file."""
    made_dir = not ETC_CONFIG.parent.exists()
    saved = ETC_CONFIG.read_bytes() if ETC_CONFIG.exists() else None
    mode = ETC_CONFIG.stat().st_mode & 0o7777 if saved is not None else 0o644
    try:
        ETC_CONFIG.parent.mkdir(parents=True, exist_ok=True)
        ETC_CONFIG.write_text(text)
        ETC_CONFIG.chmod(0o644)
        yield
    finally:
        if saved is None:
            ETC_CONFIG.unlink(missing_ok=True)
        else:
            ETC_CONFIG.write_bytes(saved)
            ETC_CONFIG.chmod(mode)
        if made_dir:
            shutil.rmtree(ETC_CONFIG.parent, ignore_errors=True)
