"""Shared test helpers: host-state guards that restore what a test changed, even when it fails."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
HUGEPAGES_SYSFS = Path("/sys/kernel/mm/hugepages")
HOST_LOCK = Path("/run/vfiotask-tests.lock")


PROFILE_ENV = "VFIOTASK_TEST_PROFILE"

# The default profile makes a run repeatable: the same examples every time (derandomized, no
# example database carried between runs), no per-example deadline (two shared vCPUs are slow at
# random moments), and a number of examples the slowest property tests finish in on such a VM.
# `VFIOTASK_TEST_PROFILE=explore` searches with fresh random examples, many more of them; a
# failure it finds is printed with the @example to pin it by.
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, max_examples=50,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", deadline=None, max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get(PROFILE_ENV, "ci"))


def is_root() -> bool:
    return os.geteuid() == 0


requires_root = pytest.mark.skipif(not is_root(), reason="needs root (changes host state)")


def status_field(name: str, pid: int | str = "self") -> int:
    """A `kB` field of /proc/PID/status in bytes (VmLck, VmPin, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(name)


@contextmanager
def holding_host_lock() -> Iterator[None]:
    """Serialize tests that change host-wide state (hugepage pools, libvirtd) across processes;
    a context manager too, for module-scoped fixtures the `host_lock` fixture cannot serve."""
    HOST_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(HOST_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture
def host_lock() -> Iterator[None]:
    with holding_host_lock():
        yield


@contextmanager
def pools_restored() -> Iterator[None]:
    """Every global hugepage pool is put back as it was when the block ends, also when it fails."""
    saved = {path: path.read_text() for path in HUGEPAGES_SYSFS.glob("hugepages-*/nr_hugepages")}
    try:
        yield
    finally:
        for path, value in saved.items():
            path.write_text(value)


@pytest.fixture
def hugepage_pools(host_lock: None) -> Iterator[None]:
    """Let a test resize hugepage pools; every pool is put back as it was afterwards."""
    if not is_root():
        pytest.skip("needs root to resize hugepage pools")
    with pools_restored():
        yield


@pytest.fixture
def inject_faults() -> Iterator[Callable[[str], None]]:
    """Fail chunks in this process as VFIOTASK_FAIL does where fault_injection is on: call it with
    `JOB:K[,JOB:K...]`, or '' for no failure.  A malformed spec raises the UsageError the command
    would exit 2 with."""
    from vfiotask import testpoints
    from vfiotask.faultinjection import ChunkFaults, parse_fail_spec

    def arm(spec: str) -> None:
        testpoints.set_chunk_fault(ChunkFaults(parse_fail_spec(spec), "the test") if spec else None)

    yield arm  # the slot is emptied after every test (points_emptied)


@pytest.fixture(autouse=True)
def points_emptied() -> Iterator[None]:
    """No test leaves a test point filled for the next one (a fixture, or an in-process hook
    prepare of a guest with fail=, fills them)."""
    yield
    from vfiotask import testpoints

    testpoints.set_chunk_fault(None)
    testpoints.set_crash_hook(None)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private VFIOTASK_STATE_DIR, so tests never touch /run/vfiotask."""
    path = tmp_path / "state"
    monkeypatch.setenv("VFIOTASK_STATE_DIR", str(path))
    return path


@pytest.fixture
def root_only_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh directory that no one but root can change at any level, for what root must trust
    (a config file, an installed vfiotask), made under /run and removed afterwards; a user other
    than root gets a tmp_path, since vfiotask asks root alone for such paths."""
    if not is_root():
        yield tmp_path_factory.mktemp("root-only")
        return
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="vfiotask-test-", dir="/run"))
    path.chmod(0o755)  # others may look (an attacker's own directory can be below it), not write
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def vfiotask_command() -> list[str]:
    exe = shutil.which("vfiotask", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "vfiotask.integrations.cli.main"]


def run_cli(*args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None,
            timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `vfiotask` command as a user would, capturing its output."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [*(prefix or []), *vfiotask_command(), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        input=input,
    )


@contextmanager
def private_mount(mountpoint: Path, fstype: str, options: str) -> Iterator[Path]:
    """Mount `fstype` with `options` on a fresh `mountpoint` (the test skips if that is refused);
    unmounted afterwards, also when the test fails."""
    mountpoint.mkdir()
    result = subprocess.run(["mount", "-t", fstype, "-o", options, "none", str(mountpoint)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount {fstype} -o {options}: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture
def hugetlbfs_mount(hugepage_pools: None, tmp_path: Path) -> Iterator[Path]:
    """A private hugetlbfs mount (2 MiB pages), unmounted afterwards."""
    with private_mount(tmp_path / "hugetlbfs", "hugetlbfs", "pagesize=2M") as mountpoint:
        yield mountpoint


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A private directory on tmpfs (/dev/shm) for backing files, removed with what is left in it."""
    base = Path("/dev/shm")
    if not base.is_dir():
        pytest.skip("no /dev/shm tmpfs on this host")
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="vfiotask-test-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def drop_ipc_lock(memlock: int = 8 << 20) -> list[str]:
    """A command prefix that runs a child without CAP_IPC_LOCK and with RLIMIT_MEMLOCK lowered."""
    if not shutil.which("prlimit"):
        pytest.skip("prlimit (util-linux) is needed to lower RLIMIT_MEMLOCK")
    if not is_root():  # a normal user holds no CAP_IPC_LOCK to drop
        return ["prlimit", f"--memlock={memlock}"]
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to drop CAP_IPC_LOCK")
    return ["setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock", "prlimit", f"--memlock={memlock}"]


@contextmanager
def real_state_dir_kept_as_found() -> Iterator[None]:
    """Commands run as users run them use /run/vfiotask (libvirtd gives the hook no environment
    to override it); when the block created that directory, it goes again at the end."""
    from vfiotask.statedir import DEFAULT_STATE_DIR

    existed = DEFAULT_STATE_DIR.exists()
    try:
        yield
    finally:
        if not existed:
            shutil.rmtree(DEFAULT_STATE_DIR, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def real_state_dir_restored() -> Iterator[None]:
    with real_state_dir_kept_as_found():
        yield


@pytest.fixture(scope="session", autouse=True)
def trusted_configs_removed() -> Iterator[None]:
    """The config files tests.support wrote where root trusts them go at the session's end."""
    from tests.support import TRUSTED_CONFIGS

    yield
    shutil.rmtree(TRUSTED_CONFIGS, ignore_errors=True)
