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

from vfiotask.errors import EXIT_FAILURE, EXIT_USAGE, Interrupted, Terminated, VfiotaskError

COMMAND_MODULES = (
    "prepin",
    "bench",
    "devices",
    "bind",
    "hugepages",
    "hook",
    "tune",
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


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="vfiotask: %(levelname)s: %(message)s")
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
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
    except BrokenPipeError:  # `vfiotask ... | head`: the reader left; not a bug, so no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush must not fail again
        print("vfiotask: standard output was closed before the report was written; everything taken was released",
              file=sys.stderr)
        return EXIT_FAILURE
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
