"""Entry point of the `vfiotask` command.

Each subcommand lives in its own module with a `register(subparsers)` function that adds its
parser and sets `handler`, a function `(args) -> int`.  Errors of the vfiotask family become one
line on stderr and their documented exit status; nothing else is caught here, so a bug still
shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any, TextIO

from vfiotask.errors import EXIT_USAGE, Interrupted, Terminated, VfiotaskError, describe_exception

COMMAND_MODULES = (
    "prepin",
    "bench",
    "devices",
    "bind",
    "hugepages",
    "hook",
    "tune",
    "setup",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line and exit 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"vfiotask: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vfiotask", description="Parallel preparation of VFIO guest memory.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (twice for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"vfiotask.integrations.cli.{name}")
        module.register(subparsers)
    return parser


class OutputError(VfiotaskError):
    """Standard output cannot take the report (its reader left, its disk is full)."""

    def __init__(self, cause: OSError) -> None:
        if isinstance(cause, BrokenPipeError):
            what = "standard output was closed before the report was written"
        else:
            what = f"cannot write the report to standard output: {describe_exception(cause)}"
        super().__init__(f"{what}; everything taken was released")


class _GuardedOutput:
    """sys.stdout whose write failures become an OutputError, raised where the handler printed,
    so that its undo runs as for any other failure; everything else goes to the real stream."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise OutputError(exc) from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise OutputError(exc) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="vfiotask: %(levelname)s: %(message)s")
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    stdout, sys.stdout = sys.stdout, _GuardedOutput(sys.stdout)
    try:
        return int(args.handler(args))
    except VfiotaskError as exc:
        print(f"vfiotask: {exc.one_line()}", file=sys.stderr)
        return exc.exit_status
    except Terminated as exc:
        print("vfiotask: terminated; everything taken was released", file=sys.stderr)
        return Interrupted("terminated", signum=exc.signum).exit_status
    except KeyboardInterrupt:
        print("vfiotask: interrupted; everything taken was released", file=sys.stderr)
        return 130
    except OutputError as exc:  # `| head`, a full disk: not a bug, so no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())  # the exit flush must not fail again
        print(f"vfiotask: {exc.one_line()}", file=sys.stderr)
        return exc.exit_status
    finally:
        sys.stdout = stdout
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
