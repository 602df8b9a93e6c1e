"""The one output contract of every command.

JSON is one line per report (compact, keys sorted), so that `--json` output can be read line by
line (`--hold` keeps running after its report) and piped to `jq`; keys are snake_case with the
unit in the name (`_bytes`, `_seconds`), NUMA nodes are numbers or null, times ISO 8601 in UTC.
Tables have a header row.  A command that finds nothing to do says so and exits 0 (EXIT_NOTHING),
like one that did its work: a script wants the state, not an error, and --json says
`"changed": false`.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from vfiotask.errors import EXIT_OK

EXIT_NOTHING = EXIT_OK


def print_json(data: Any) -> None:
    print(json.dumps(data, sort_keys=True), flush=True)


def iso_time(epoch: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 in UTC (None stays None)."""
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(float(epoch), datetime.UTC).isoformat(timespec="seconds")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, numbers_right: bool = True) -> str:
    """Columns as wide as their widest cell, a header row first; columns of numbers aligned right
    unless `numbers_right` is false."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    right = [numbers_right and bool(cells) and all(_numeric(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def _numeric(text: str) -> bool:
    return text.replace(".", "", 1).isdigit() or text == "-"


def note(text: str) -> None:
    """A remark about the run (not the report) on stderr; -q (logging at ERROR) silences it."""
    if logging.getLogger().getEffectiveLevel() > logging.WARNING:
        return
    print(f"vfiotask: {text}", file=sys.stderr, flush=True)
