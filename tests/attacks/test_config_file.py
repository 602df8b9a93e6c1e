"""/etc/vfiotask/config.toml (or VFIOTASK_CONFIG) that another user can steer.

Root takes state_dir and helper_nice from the file.  A file another user owns or can write, or
one below a directory they can write (a sticky /tmp included: they can replace what they own
there), would let them choose where root keeps the journals it undoes from.  Each is refused
with one line, exit 3, before anything is read from it: the state dir it names is never made.
A FIFO at the path is one line too (it used to hang every command), and a state_dir with a NUL
or a relative VFIOTASK_STATE_DIR is bad input (exit 2), never a traceback.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.attacks.conftest import Attacker, owned_tree
from tests.conftest import run_cli


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vfiotask: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def attackers_dir(base: Path, attacker: Attacker) -> Path:
    """A directory the attacker owns (their home, a project directory) below one only root can write."""
    home = base / "home"
    home.mkdir(mode=0o755)
    os.chown(home, attacker.uid, attacker.gid)
    return home


def evil_settings(target: Path) -> str:
    return f'state_dir = "{target}"\nhelper_nice = -20\n'


def refused(config: Path, target: Path, *extra: str) -> str:
    """`config show` and a command that uses the state dir, both with `config`: one line, exit 3,
    nothing made where the file points."""
    for argv in (["config", "show"], ["hugepages", "status"]):
        result = run_cli(*argv, env={"VFIOTASK_CONFIG": str(config)}, timeout=60)
        line = one_line(result.stderr)
        assert (result.returncode, result.stdout) == (3, ""), result.stderr
        assert line.startswith(f"vfiotask: config file {config}") and "refused" in line, line
        for text in extra:
            assert text in line, line
    assert not os.path.lexists(target)
    return line


def test_a_file_the_attacker_owns_is_refused(root_only_dir: Path, attacker: Attacker) -> None:
    home = attackers_dir(root_only_dir, attacker)
    config, target = home / "config.toml", root_only_dir / "evil-state"
    planted = attacker.sh(f"printf '%s' '{evil_settings(target)}' > {config}")
    assert planted.returncode == 0, planted.stderr
    before = owned_tree(root_only_dir)
    refused(config, target, f"is owned by {attacker.name}")
    assert owned_tree(root_only_dir) == before


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_a_root_file_others_can_write_is_refused(root_only_dir: Path, attacker: Attacker, mode: int) -> None:
    """Root's own file with a group or other write bit: the attacker wrote it (as a member of that group,
    or as anyone)."""
    config, target = root_only_dir / "config.toml", root_only_dir / "evil-state"
    config.write_text("")
    os.chown(config, 0, attacker.gid if mode & 0o020 else 0)  # a group the attacker is in, or anyone
    config.chmod(mode)
    written = attacker.sh(f"printf '%s' '{evil_settings(target)}' > {config}")
    assert written.returncode == 0, written.stderr
    refused(config, target, "writable by")
    assert stat.S_IMODE(config.stat().st_mode) == mode and config.stat().st_uid == 0


def test_a_name_planted_first_in_a_sticky_world_writable_directory_is_refused(root_only_dir: Path,
                                                                              attacker: Attacker) -> None:
    """A /tmp-like directory on the way is allowed (no one renames what is not theirs there), but a
    name the attacker made in it before root is the attacker's, and refused."""
    shared = root_only_dir / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    config, target = shared / "config.toml", root_only_dir / "evil-state"
    assert attacker.sh(f"printf '%s' '{evil_settings(target)}' > {config}").returncode == 0
    line = refused(config, target, f"is owned by {attacker.name}")
    assert "another user could change it" in line
    assert config.read_text() == evil_settings(target)


def test_roots_file_in_a_sticky_world_writable_directory_is_read(root_only_dir: Path) -> None:
    shared = root_only_dir / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    config = shared / "config.toml"
    config.write_text("max_threads = 3\n")
    result = run_cli("config", "show", "--json", env={"VFIOTASK_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr


def test_a_link_to_the_attackers_file_is_refused(root_only_dir: Path, attacker: Attacker) -> None:
    """A link in root's own directory is followed (the administrator's choice), and what it points at
    is checked like the path itself."""
    home = attackers_dir(root_only_dir, attacker)
    target = root_only_dir / "evil-state"
    assert attacker.sh(f"printf '%s' '{evil_settings(target)}' > {home}/config.toml").returncode == 0
    link = root_only_dir / "config.toml"
    link.symlink_to(home / "config.toml")
    refused(link, target, f"{home} is owned by {attacker.name}")


def test_a_link_among_roots_own_files_is_followed(root_only_dir: Path) -> None:
    """/etc/vfiotask/config.toml linked to a file in root's configuration checkout is fine."""
    (root_only_dir / "checkout").mkdir()
    (root_only_dir / "checkout" / "vfiotask.toml").write_text("helper_nice = 7\n")
    link = root_only_dir / "config.toml"
    link.symlink_to("checkout/vfiotask.toml")
    result = run_cli("config", "show", env={"VFIOTASK_CONFIG": str(link)})
    assert result.returncode == 0, result.stderr
    assert ["helper_nice", "7", "file", f"({link})"] in [line.split() for line in result.stdout.splitlines()]


@pytest.mark.parametrize("whose", ["root", "attacker"])
def test_a_fifo_at_the_path_is_one_line_not_a_hang(root_only_dir: Path, attacker: Attacker, whose: str) -> None:
    """A FIFO nobody writes to blocked every command forever; now it is refused before a read."""
    if whose == "root":
        config = root_only_dir / "config.toml"
        os.mkfifo(config, 0o644)
        status, needle = 2, "is not a regular file"
    else:
        config = attackers_dir(root_only_dir, attacker) / "config.toml"
        assert attacker.sh(f"mkfifo {config}").returncode == 0
        status, needle = 3, f"is owned by {attacker.name}"
    for argv in (["config", "show"], ["prepin", "--size", "2M", "--pin", "none"]):
        result = run_cli(*argv, env={"VFIOTASK_CONFIG": str(config)}, timeout=30)
        line = one_line(result.stderr)
        assert result.returncode == status and needle in line, result.stderr
    assert stat.S_ISFIFO(os.lstat(config).st_mode)


def test_a_nul_in_state_dir_is_bad_input(root_only_dir: Path) -> None:
    config = root_only_dir / "config.toml"
    config.write_text('state_dir = "/run/vfiotask\\u0000/../../tmp"\n')
    for argv in (["config", "show"], ["hugepages", "status"]):
        result = run_cli(*argv, env={"VFIOTASK_CONFIG": str(config)})
        line = one_line(result.stderr)
        assert result.returncode == 2 and "holds a control character" in line, result.stderr


def test_a_relative_state_dir_variable_is_refused(root_only_dir: Path) -> None:
    """VFIOTASK_STATE_DIR=state would be a different directory in every working directory."""
    cwd = root_only_dir / "cwd"
    cwd.mkdir()
    for argv in (["hugepages", "status"], ["prepin", "--size", "2M", "--pin", "none"], ["recover"],
                 ["config", "show"]):
        result = run_cli(*argv, env={"VFIOTASK_STATE_DIR": "state"}, prefix=["env", f"--chdir={cwd}"])
        line = one_line(result.stderr)
        assert result.returncode == 2 and "VFIOTASK_STATE_DIR='state' is not an absolute path" in line, line
    assert list(cwd.iterdir()) == []
