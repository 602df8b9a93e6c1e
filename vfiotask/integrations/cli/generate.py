"""Write the manual page vfiotask(1) and the bash and zsh completions from the argparse parser.

Both come from the parser itself, so an option added to a command is in the manual and in the
completion at the next `python -m vfiotask.integrations.cli.generate`; a test regenerates them
and fails when the files in the package differ.  argparse-manpage and shtab are well kept
(PyPI releases in 2026, used by Fedora's and DVC's tools) and read argparse's own structures;
a hand-written generator would have to follow every argparse release.  They are needed only to
generate, not to run: the generated files ship in the package (vfiotask/share).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

SHARE = Path(__file__).resolve().parents[2] / "share"
MANPAGE = Path("man/man1/vfiotask.1")
BASH = Path("bash-completion/completions/vfiotask")
ZSH = Path("zsh/site-functions/_vfiotask")

EXTRA_SECTIONS = """\
[EXIT STATUS]
.TP
.B 0
done, or nothing to do (the command says so; with \\-\\-json, "changed": false).
.TP
.B 1
failed: a host state, a permission (root needed), or an unexpected kernel answer.
.TP
.B 2
bad input: an option, a size, a config file; nothing was changed.
.TP
.B 3
not enough resources: locked\\-memory budget, memory, hugepages; nothing was kept.  Also a state
directory, a config file, the code \\fBhook install\\fR would have libvirtd run, or a sysfs tree to
write into, that another user could change: refused.
.TP
.B 4
a device or IOMMU group cannot be used.
.TP
.B 130, 143
interrupted (SIGINT, SIGTERM); everything taken was released.

[FILES]
.TP
.I /etc/vfiotask/config.toml
host\\-wide defaults; see \\fBvfiotask config show\\fR.
.TP
.I /run/vfiotask/
journals of reservations, bindings and guests (root's).
.TP
.I /etc/libvirt/hooks/qemu.d/50\\-vfiotask
the libvirt qemu hook \\fBvfiotask hook install\\fR writes.

[ENVIRONMENT]
.TP
.B VFIOTASK_CONFIG
another config file (tests, trials).
.TP
.B VFIOTASK_STATE_DIR
another state directory.
.TP
.B VFIOTASK_SYSFS_ROOT
a tree laid out like /sys to act on instead of the host's.

[SIZES]
Sizes are binary: K, M, G and T (or KiB, MiB, GiB, TiB) are powers of 1024; a bare number is bytes.
Decimal units (KB, MB, GB, TB) and bit units (Kb, Mb, Gb) are refused rather than guessed.

[SEE ALSO]
.BR virsh (1),
.BR libvirtd (8),
.BR qemu (1).
The quick start: /usr/local/share/doc/vfiotask/quickstart.md or docs/quickstart.md in the source.
"""


def _parser() -> argparse.ArgumentParser:
    from vfiotask.integrations.cli.main import build_parser

    return build_parser()


def generate() -> dict[Path, str]:
    """The files (relative to vfiotask/share) and their text."""
    import shtab
    from argparse_manpage.manpage import Manpage

    from vfiotask import __version__

    with tempfile.NamedTemporaryFile("w", suffix=".txt") as include:
        include.write(EXTRA_SECTIONS)
        include.flush()
        page = Manpage(_parser(), _data={
            "project_name": "vfiotask", "version": __version__, "manual_title": "vfiotask manual",
            "manual_section": 1, "date": "", "include": include.name,
            "description": "parallel preparation of VFIO guest memory, devices and hugepages",
        })
        page.date = "vfiotask " + __version__  # stable across days: the test compares byte for byte
        manual = str(page)
    return {
        MANPAGE: manual,
        BASH: shtab.complete(_parser(), shell="bash"),
        ZSH: shtab.complete(_parser(), shell="zsh"),
    }


def main(argv: list[str] | None = None) -> int:
    target = Path(argv[0]) if argv else SHARE
    for relative, text in generate().items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
