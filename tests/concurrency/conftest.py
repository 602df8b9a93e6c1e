"""The hook's private host (memory_backing_dir on tmpfs, qemu.conf, state dir), shared with tests/libvirt."""

from tests.libvirt.conftest import hook_host  # noqa: F401
