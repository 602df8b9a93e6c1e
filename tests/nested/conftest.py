"""The nested guest boots while the host's tests run: its checks go last, and the boot starts as
soon as collection is over, when the session selects any of them (tests/nested/background.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nested import background

JUDGED_HERE = Path(__file__).with_name("test_nested.py")


def _judged_here(item: pytest.Item) -> bool:
    return Path(str(item.path)) == JUDGED_HERE


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_judged_here)  # stable: the rest keep their order


def pytest_collection_finish(session: pytest.Session) -> None:
    if not session.config.option.collectonly and any(_judged_here(item) for item in session.items):
        background.start()


def pytest_sessionfinish() -> None:
    background.stop()
