"""A finding: one line of `vfiotask check`, with what was seen and the command that fixes it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vfiotask.errors import EXIT_DEVICE, EXIT_FAILURE, EXIT_OK

OK = "ok"
WARN = "warn"
FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    """`fatal`: a failure that means this host cannot do VFIO at all (no IOMMU, no vfio-pci)."""

    level: str
    topic: str
    seen: str
    fix: str = ""
    fatal: bool = False

    def line(self) -> str:
        text = f"{self.level:<4}  {self.topic}: {self.seen}"
        return f"{text}; fix: {self.fix}" if self.fix and self.level != OK else text

    def to_dict(self) -> dict[str, object]:
        return {"level": self.level, "topic": self.topic, "seen": self.seen, "fix": self.fix or None,
                "fatal": self.fatal}


def ok(topic: str, seen: str) -> Finding:
    return Finding(OK, topic, seen)


def warn(topic: str, seen: str, fix: str = "") -> Finding:
    return Finding(WARN, topic, seen, fix)


def fail(topic: str, seen: str, fix: str = "", *, fatal: bool = False) -> Finding:
    return Finding(FAIL, topic, seen, fix, fatal)


def exit_status(findings: Iterable[Finding]) -> int:
    """0 when nothing fails, 4 when the host cannot do VFIO at all, 1 for any other failure."""
    failed = [f for f in findings if f.level == FAIL]
    if any(f.fatal for f in failed):
        return EXIT_DEVICE
    return EXIT_FAILURE if failed else EXIT_OK
