"""What the nested guest needs to install vfiotask as `make install` does, prepared on the host.

- `copy_source(results)`: the checkout's files (tracked and untracked, not ignored) in
  `results/src`, so that `make install` inside the guest builds from a writable copy (the
  guest's checkout is read-only, and pip builds in the source tree);
- `install_archive(results)`: `make install`, unchanged and offline (PIP_NO_INDEX, PIP_FIND_LINKS
  at the wheelhouse), run here in a private mount namespace whose /opt, /usr/local and
  /etc/systemd are empty directories of the work dir, packed as `results/install.tar` for the guest
  to unpack.  The guest's root is this host's root, so the paths, the interpreter the venv points
  at and the libvirt that `pkg-config` finds are the same; nothing of this host's /opt, /usr/local
  or /etc/systemd is read or changed.  Under TCG the same `make install` takes the guest about
  9 minutes, here half a minute.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from tests.nested.kernels import BUILD, REPO

WHEELHOUSE = BUILD / "wheelhouse"
INSTALLED = ("opt", "usr/local", "etc/systemd")
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # boot.py's run.sh sets the same


def wheelhouse_missing() -> str | None:
    """Why the guest cannot install offline, or None."""
    if not any(WHEELHOUSE.glob("*.whl")):
        return f"no wheelhouse in {WHEELHOUSE}: run 'make nested-kernels'"
    return None


def offline_env() -> dict[str, str]:
    """pip with no index and the wheelhouse as its only source, whatever this host's pip config says."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "VIRTUAL_ENV"))}
    env.update({"PATH": GUEST_PATH, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE),
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONFIG_FILE": os.devnull})
    return env


def copy_source(target: Path) -> Path:
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if not source.is_file():  # deleted in the work tree, or a submodule
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    return target


def install_archive(workdir: Path, archive: Path) -> Path:
    """`make install` into empty /opt, /usr/local and /etc/systemd of a private namespace; `archive`
    holds what it put there."""
    source = copy_source(workdir / "install-src")
    roots = {part: workdir / "installed" / part for part in INSTALLED}
    binds = []
    for part, directory in roots.items():
        directory.mkdir(parents=True)
        binds.append(f"mount --bind {directory} /{part}")
    script = " && ".join([*binds, "make -s install"])
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script], cwd=source,
                          env=offline_env(), capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"make install failed: {(done.stderr or done.stdout).strip()[-3000:]}")
    with tarfile.open(archive, "w") as tar:
        for part, directory in roots.items():
            tar.add(directory, arcname=part)
    shutil.rmtree(workdir / "installed")
    shutil.rmtree(source)
    return archive
