"""`vfiotask prepin` as a user runs it: output, exit status, one-line errors, nothing left behind."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import drop_ipc_lock, is_root, run_cli, status_field, vfiotask_command
from tests.support import faults_on
from vfiotask.host.hugepages import HugepagePools
from vfiotask.memory.accountant import LockedMemoryAccountant

MiB = 1 << 20
SMALL = ["--size", "32M", "--min-chunk", "4M"]

# Runs the command in-process, then reports what the kernel says is still locked before exiting.
WRAPPER = (
    "import sys\n"
    "from vfiotask.integrations.cli.main import main\n"
    "from vfiotask.host.procfs import locked_memory\n"
    "rc = main(sys.argv[1:])\n"
    "print(f'VmLck-after: {locked_memory().vm_lck}', file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def run_wrapped(*args: str, env: dict[str, str] | None = None,
                prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def locked_after(result: subprocess.CompletedProcess[str]) -> int:
    line = [x for x in result.stderr.splitlines() if x.startswith("VmLck-after:")][-1]
    return int(line.split()[1])


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [x for x in result.stderr.splitlines() if not x.startswith("VmLck-after:")]


def assert_one_line(result: subprocess.CompletedProcess[str], status: int, *words: str) -> str:
    lines = error_lines(result)
    assert result.returncode == status, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vfiotask: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]
    return lines[0]


def test_embedded_default_prefaults_and_pins_a_gib() -> None:
    result = run_cli("prepin")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()
    for column in ("size", "page size", "threads", "chunks", "prefault s", "pin s", "GiB/s", "locked"):
        assert column in header
    assert row.startswith("1.0 GiB")
    room = LockedMemoryAccountant().room
    if room is None or room >= 1 << 30:
        assert row.endswith("1.0 GiB (mlock)")
    else:  # a normal user's memlock limit: said on stderr, prefault alone shown
        assert row.endswith("0 B") and "not pinning" in result.stderr


def test_json_fields() -> None:
    result = run_cli("prepin", *SMALL, "--json", "--backing", "anon")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("size_bytes", "page_size_bytes", "threads", "chunks", "prefault_seconds", "pin_seconds", "seconds",
                "gib_per_s", "locked_bytes"):
        assert key in data
    assert (data["size_bytes"], data["page_size_bytes"], data["locked_bytes"], data["pin"]) == (
        32 * MiB, 4096, 32 * MiB, "mlock")
    assert data["chunks"] >= 2 and data["threads"] >= 1
    assert data["seconds"] == pytest.approx(data["prefault_seconds"] + data["pin_seconds"], abs=1e-5)
    for plan in (data["plan"], data["pin_plan"]):
        assert set(plan) == {"threads", "chunk_size", "chunks", "limited_by", "cpus_usable"}
    assert (data["plan"]["chunks"], data["plan"]["threads"]) == (data["chunks"], data["threads"])
    assert data["plan"]["chunk_size"] >= 4 * MiB


def test_verbose_names_the_plan() -> None:
    result = run_cli("-v", "prepin", *SMALL, "--backing", "anon", "--pin", "none")
    assert result.returncode == 0, result.stderr
    assert "prefault:" in result.stderr and "limited by" in result.stderr, result.stderr


def test_pin_none_locks_nothing() -> None:
    result = run_wrapped("prepin", *SMALL, "--json", "--pin", "none")
    assert result.returncode == 0
    assert json.loads(result.stdout)["locked_bytes"] == 0
    assert locked_after(result) == 0


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["--size", "0"], 2, ["greater than zero"]),
        (["--size=-1G"], 2, ["not a size"]),
        (["--size", "lots"], 2, ["not a size"]),
        (["--size", "4097"], 2, ["not a multiple"]),
        (["--size", "100T"], 3, ["more than the host can give"]),
        (["--size", "8M", "--threads", "0"], 2, ["--threads"]),
        (["--size", "8M", "--threads", "many"], 2, ["--threads"]),
        (["--size", "8M", "--node", "4095"], 2, ["NUMA node 4095"]),
        (["--size", "8M", "--pin", "sometimes"], 2, ["--pin"]),
        (["--size", "8M", "--helper-nice", "20"], 2, ["--helper-nice"]),
    ],
)
def test_bad_input_one_line(args: list[str], status: int, words: list[str]) -> None:
    assert_one_line(run_cli("prepin", *args), status, *words)


def test_bad_backing_paths_create_nothing(shm_dir: Path, tmp_path: Path) -> None:
    (shm_dir / "other.ram").write_bytes(b"\0" * 4096)
    (shm_dir / "link.ram").symlink_to(shm_dir / "other.ram")
    cases = [
        (str(shm_dir / "missing" / "guest.ram"), 2, "does not exist"),
        (str(tmp_path / "guest.ram"), 2, "written back to disk"),
        (str(shm_dir / "other.ram"), 2, "exists with size"),
        (str(shm_dir / "link.ram"), 2, "symbolic link"),
        (str(shm_dir / ("x" * 300)), 2, "File name too long"),
    ]
    before = sorted(os.listdir(shm_dir)), sorted(os.listdir(tmp_path))
    for backing, status, words in cases:
        assert_one_line(run_cli("prepin", "--size", "8M", "--backing", backing), status, words)
        assert (sorted(os.listdir(shm_dir)), sorted(os.listdir(tmp_path))) == before
    assert (shm_dir / "other.ram").read_bytes() == b"\0" * 4096


def test_a_kernel_interface_is_refused_even_with_force() -> None:
    result = run_cli("prepin", "--size", "8M", "--backing", "/proc/guest.ram", "--force")
    assert_one_line(result, 2, "kernel interface")
    assert not Path("/proc/guest.ram").exists()


def test_backing_directory_the_user_may_not_write_is_one_line(shm_dir: Path) -> None:
    locked = shm_dir / "locked"
    locked.mkdir(mode=0o555)
    shm_dir.chmod(0o755)
    # root writes anywhere: the refusal is only seen as another user
    prefix: list[str] = []
    env: dict[str, str] = {}
    if is_root():
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        own_state = shm_dir / "state"  # the user's own state dir, so that only the backing directory is refused
        own_state.mkdir(mode=0o700)
        nobody = pwd.getpwnam("nobody")
        os.chown(own_state, nobody.pw_uid, nobody.pw_gid)
        env = {"VFIOTASK_STATE_DIR": str(own_state)}
    result = run_cli("prepin", "--size", "8M", "--backing", str(locked / "guest.ram"), prefix=prefix, env=env)
    assert_one_line(result, 2, "Permission denied")
    assert os.listdir(locked) == []


def test_force_accepts_a_disk_file(tmp_path: Path) -> None:
    result = run_cli("prepin", "--size", "8M", "--backing", str(tmp_path / "guest.ram"), "--force", "--pin", "none")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "guest.ram").stat().st_size == 8 * MiB


def test_created_file_stays_populated_after_success(shm_dir: Path) -> None:
    path = shm_dir / "guest.ram"
    result = run_wrapped("prepin", *SMALL, "--backing", str(path))
    assert result.returncode == 0, result.stderr
    assert path.stat().st_blocks * 512 == 32 * MiB
    assert locked_after(result) == 0  # pins released at exit, pages kept


def test_memlock_limit_without_cap_ipc_lock_exits_3_with_nothing_locked(shm_dir: Path) -> None:
    prefix = drop_ipc_lock(8 * MiB)
    path = shm_dir / "guest.ram"
    result = run_wrapped("prepin", *SMALL, "--pin", "mlock", "--backing", str(path), prefix=prefix)
    line = assert_one_line(result, 3, "RLIMIT_MEMLOCK", "8388608 bytes", "CAP_IPC_LOCK", "<memtune><hard_limit>")
    assert "33554432 bytes" in line
    assert locked_after(result) == 0
    assert not path.exists()


def test_memlock_limit_allows_what_fits() -> None:
    result = run_wrapped("prepin", "--size", "4M", "--min-chunk", "1M", "--pin", "mlock", "--json",
                         prefix=drop_ipc_lock(8 * MiB))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["locked_bytes"] == 4 * MiB
    assert locked_after(result) == 0


def test_auto_pin_over_budget_says_so_and_shows_the_prefault() -> None:
    result = run_wrapped("prepin", *SMALL, prefix=drop_ipc_lock(8 * MiB))
    assert result.returncode == 0
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("vfiotask: not pinning:")
    assert "8388608 bytes" in lines[0] and "prefault alone" in lines[0]
    _header, row = result.stdout.strip().splitlines()
    assert row.startswith("32.0 MiB") and row.endswith("0 B")
    assert locked_after(result) == 0


@pytest.mark.parametrize("job", ["prefault", "pin"])
def test_injected_failure_at_each_chunk_undoes_everything(job: str, shm_dir: Path, tmp_path: Path) -> None:
    path = shm_dir / "guest.ram"
    # 4 chunks whether 1, 2 or 4 threads run (a busy CPU may leave one): each K below is claimed
    steady = ["--size", "32M", "--min-chunk", "8M"]
    ok = run_cli("prepin", *steady, "--json", "--backing", str(shm_dir / "probe.ram"))
    data = json.loads(ok.stdout)
    chunks = data["chunks"] if job == "prefault" else data["pin_chunks"]
    assert chunks >= 2
    for index in range(1, chunks + 1):
        result = run_wrapped("prepin", *steady, "--backing", str(path),
                             env=faults_on(tmp_path, VFIOTASK_FAIL=f"{job}:{index}"))
        assert_one_line(result, 1, "EIO", "injected by fault_injection", "chunk")
        assert locked_after(result) == 0
        assert not path.exists(), f"{job}:{index} left the backing file"


def test_hugetlbfs_backing(hugetlbfs_mount: Path) -> None:
    pools = HugepagePools()
    pools.set_total(2 * MiB, pools.state(2 * MiB).total + 16)
    free = pools.state(2 * MiB).free
    path = hugetlbfs_mount / "guest.ram"
    result = run_cli("prepin", *SMALL, "--backing", str(path), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["page_size_bytes"], data["locked_bytes"]) == (2 * MiB, 32 * MiB)
    assert pools.state(2 * MiB).free == free - 16  # the file keeps its pages
    path.unlink()


def test_hugetlbfs_pool_too_small_exits_3_clean(hugetlbfs_mount: Path) -> None:
    pools = HugepagePools()
    before = pools.state(2 * MiB)
    size = (before.available + 4) * 2
    result = run_cli("prepin", "--size", f"{size}M", "--backing", str(hugetlbfs_mount / "guest.ram"))
    assert_one_line(result, 3, "2.0 MiB hugepage pool too small", f"{before.available + 4} pages needed",
                    f"{before.available} free")
    assert os.listdir(hugetlbfs_mount) == []
    assert pools.state(2 * MiB) == before


def _hold(sig: int, shm_dir: Path) -> None:
    path = shm_dir / "guest.ram"
    # A shell that runs the tests in the background ignores SIGINT, and the child would inherit
    # that: give it the default disposition a command started from a terminal has.
    child = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", WRAPPER, "prepin", *SMALL, "--backing",
                              str(path), "--hold"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert child.stdout is not None
        assert "locked" in child.stdout.readline()
        assert "32.0 MiB (mlock)" in child.stdout.readline()
        assert status_field("VmLck", child.pid) == 32 * MiB
        child.send_signal(sig)
        try:
            _out, err = child.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            _out, err = child.communicate(timeout=30)
            pytest.fail(f"prepin --hold did not end within 60 s of signal {sig}; its stderr: {err!r}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert "VmLck-after: 0" in err
    assert path.stat().st_blocks * 512 == 32 * MiB


def test_hold_until_sigterm_then_undo(shm_dir: Path) -> None:
    _hold(signal.SIGTERM, shm_dir)


def test_hold_until_sigint_then_undo(shm_dir: Path) -> None:
    _hold(signal.SIGINT, shm_dir)


def test_hold_in_process_releases_before_returning(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from vfiotask.integrations.cli import prepin
    from vfiotask.integrations.cli.main import main

    start = status_field("VmLck")
    holding = threading.Event()
    seen: list[int] = []
    real_hold = prepin._hold

    def hold() -> None:
        holding.set()
        real_hold()

    def signal_while_held() -> None:
        if holding.wait(120):
            seen.append(status_field("VmLck") - start)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(prepin, "_hold", hold)
    watcher = threading.Thread(target=signal_while_held)
    watcher.start()
    assert main(["prepin", *SMALL, "--hold", "--json"]) == 0
    watcher.join()
    assert seen == [32 * MiB]
    assert status_field("VmLck") == start


def test_a_reader_that_left_is_one_line() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `vfiotask prepin | head -0`: nobody reads the report
    try:
        result = subprocess.run([*vfiotask_command(), "prepin", *SMALL, "--json"], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, check=False, timeout=300)
    finally:
        os.close(write_end)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("vfiotask: standard output was closed")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this host")
def test_a_full_output_is_one_line_and_nothing_stays_locked() -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run([*vfiotask_command(), "prepin", *SMALL, "--pin", "mlock"], stdout=full,
                                stderr=subprocess.PIPE, text=True, check=False, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "standard output" in lines[0] and "ENOSPC" in lines[0] and "released" in lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--group", "2"], "--group only apply to --pin vfio or --pin mock"),
        (["--device", "0000:01:00.0", "--pin", "mlock"], "--device only apply to --pin vfio or --pin mock"),
        (["--iova", "0x0"], "--iova only apply"),
        (["--domain", "g", "--size", "2G"], "--size do not apply to prepin --domain"),
        (["--domain", "g", "--hold"], "--hold do not apply to prepin --domain"),
    ],
)
def test_options_that_do_not_apply_are_refused(args: list[str], needle: str, state_dir: Path) -> None:
    """Not ignored: the user meant something by them.  Nothing is prepared."""
    result = run_cli("prepin", *args)
    assert result.returncode == 2, result.stdout
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_prepin_says_which_file_it_kept(shm_dir: Path) -> None:
    path = shm_dir / "guest.ram"
    result = run_cli("prepin", "--size", "4M", "--backing", str(path), "--pin", "none", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kept_files"] == [{"path": str(path), "size_bytes": 4 * MiB}]
    assert f"kept {path} (4.0 MiB)" in result.stderr and path.exists()
