"""The mount table reader: which filesystem holds a path."""

from __future__ import annotations

from pathlib import Path

from vfiotask.host import mounts

MOUNTINFO = r"""22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:21 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=100k
26 25 0:22 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw,size=1024k
40 22 0:40 / /mnt/huge\040pages rw,relatime - hugetlbfs none rw,pagesize=2M
41 26 0:41 / /dev/shm/inner rw - ext4 /dev/vdb rw
"""


def fake_root(tmp_path: Path) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text(MOUNTINFO)
    return tmp_path


def test_longest_mountpoint_wins(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    assert mounts.mount_of(Path("/dev/shm/guest.ram"), root).fstype == "tmpfs"
    assert mounts.mount_of(Path("/dev/shm/inner/x"), root).fstype == "ext4"
    assert mounts.mount_of(Path("/dev/null"), root).fstype == "devtmpfs"
    assert mounts.mount_of(Path("/var/lib/x"), root).mountpoint == Path("/")


def test_escaped_mountpoint_and_options(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    huge = mounts.mount_of(Path("/mnt/huge pages/f"), root)
    assert huge.fstype == "hugetlbfs"
    assert huge.options["pagesize"] == "2M"
    assert mounts.is_ram_filesystem(Path("/mnt/huge pages/f"), root)
    assert not mounts.is_ram_filesystem(Path("/home/x"), root)


def test_real_dev_shm_is_tmpfs() -> None:
    if not Path("/dev/shm").is_dir():
        return
    assert mounts.filesystem_type(Path("/dev/shm/anything")) == "tmpfs"
