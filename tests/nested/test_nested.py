"""The real device layer in a nested guest: each check that ran inside it is a test here.

One boot of the 6.12 kernel (type1 and iommufd containers, tests/nested/kernels.py) runs every
check of tests/nested/guest/ (check_*.py) with the guest's own pytest; a check that fails there
fails here with its message and the end of the guest's console.  A guest that hangs is killed
after background.GUEST_TIMEOUT_S and every check of it fails saying so.  The boot runs in the
background beside the host's tests (tests/nested/background.py); these tests come last.

The same boot runs libvirtd with vfiotask installed (check_libvirt.py): before it boots, `make
install` runs here, offline, into a private mount namespace, and the guest unpacks what it
installed (tests/nested/install.py); VFIOTASK_NESTED_INSTALL=guest leaves `make install` to the
guest itself (about 9 minutes more under TCG).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nested import background
from tests.nested.background import Outcome

CHECKS_DIR = Path(__file__).with_name("guest")


def guest_checks() -> list[tuple[str, str]]:
    """(module, function) of every check, read from the files: known before any guest boots."""
    found = []
    for path in sorted(CHECKS_DIR.glob("check_*.py")):
        found += [(path.stem, name) for name in re.findall(r"^def (test_\w+)", path.read_text(), re.M)]
    return found


@pytest.fixture(scope="session")
def guest() -> Iterator[Outcome]:
    """The boot tests/nested/conftest.py started when collection ended (or now, when it did not)."""
    yield background.start().outcome()


def judge(outcome: Outcome, module: str, function: str) -> None:
    run = outcome.run
    where = f"\n--- end of the guest's console ({run.seconds:.0f} s) ---\n{run.tail()}"
    if run.timed_out:
        pytest.fail(f"the guest did not power off within {run.seconds:.0f} s{where}")
    mine = [c for c in outcome.cases
            if c.get("classname", "").endswith(module) and re.fullmatch(rf"{function}(\[.*\])?", c.get("name", ""))]
    if not mine:
        pytest.fail(f"{module}::{function} did not run in the guest (pytest exit {run.rc}){where}")
    failures = [(c.get("name"), f) for c in mine for f in [*c.iter("failure"), *c.iter("error")]]
    if failures:
        text = "\n\n".join(f"{name}: {f.get('message', '')}\n{f.text or ''}" for name, f in failures)
        pytest.fail(f"in the guest:\n{text}{where}")
    skipped = [c for c in mine if c.find("skipped") is not None]
    if len(skipped) == len(mine):
        pytest.skip(f"skipped in the guest: {skipped[0].find('skipped').get('message', '')}")  # type: ignore[union-attr]


@pytest.mark.parametrize(("module", "function"), guest_checks())
def test_in_the_nested_guest(guest: Outcome, module: str, function: str) -> None:
    judge(guest, module, function)
