"""Progress lines: on a terminal's stderr only, and in syslog for big guests."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

from tests.conftest import requires_root, vfiotask_command
from vfiotask.integrations.progress import HOOK_PROGRESS_MIN_BYTES, Meter, describe, hook_meter
from vfiotask.units import GiB, MiB


def run_on_terminal(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The command with its stderr on a pseudo-terminal, as a user at a shell sees it."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([*vfiotask_command(), *args], stdout=subprocess.PIPE, stderr=follower,
                               env={**os.environ, **(env or {})}, text=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    stdout = process.stdout.read() if process.stdout else ""
    return process.wait(), stdout, b"".join(chunks).decode(errors="replace")


def test_prepin_shows_progress_on_a_terminal_and_clears_it() -> None:
    status, stdout, terminal = run_on_terminal("prepin", "--size", "64M", "--pin", "none", "--min-chunk", "2M")
    assert status == 0, terminal
    assert "prefault: 64.0 MiB of 64.0 MiB (100%)" in terminal and "GiB/s" in terminal and "ETA" in terminal
    assert terminal.endswith("\r\x1b[K")  # the line is gone before the report
    assert "prefault:" not in stdout


def test_quiet_and_pipes_get_no_progress() -> None:
    status, _, terminal = run_on_terminal("prepin", "--size", "16M", "--pin", "none", "-q")
    assert status == 0 and "prefault:" not in terminal
    piped = subprocess.run([*vfiotask_command(), "prepin", "--size", "16M", "--pin", "none"],
                           capture_output=True, text=True)
    assert piped.returncode == 0 and piped.stderr == ""


@requires_root
def test_hugepages_reserve_shows_progress(hugepage_pools: None, state_dir: Path) -> None:
    if not Path("/sys/kernel/mm/hugepages/hugepages-2048kB").is_dir():
        return
    env = {"VFIOTASK_STATE_DIR": str(state_dir)}
    try:
        status, _, terminal = run_on_terminal("hugepages", "reserve", "--size", "4M", "--page-size", "2M",
                                              "--owner", "progress", env=env)
        assert status == 0, terminal
        assert "hugepages for progress: 4.0 MiB of 4.0 MiB (100%)" in terminal
    finally:
        subprocess.run([*vfiotask_command(), "hugepages", "release", "--owner", "progress"], env={**os.environ, **env},
                       capture_output=True)


def test_the_hook_meter_logs_every_tenth_of_a_big_guest_only() -> None:
    lines: list[str] = []
    assert hook_meter("small", HOOK_PROGRESS_MIN_BYTES - 1, lines.append) is None
    meter = hook_meter("big: populating guest.ram", 20 * GiB, lines.append)
    assert meter is not None
    for done in range(0, 20 * GiB + 1, GiB):
        meter(done, 20 * GiB)
    assert len(lines) == 10
    assert lines[-1].startswith("big: populating guest.ram: 20.0 GiB of 20.0 GiB (100%)")


def test_describe_says_bytes_rate_and_eta() -> None:
    assert describe("x", 512 * MiB, GiB, 1.0) == "x: 512.0 MiB of 1.0 GiB (50%), 0.50 GiB/s, ETA 1 s"
    assert describe("x", 0, GiB, 0.0).endswith("ETA -")
    assert isinstance(Meter("x", print), Meter)
