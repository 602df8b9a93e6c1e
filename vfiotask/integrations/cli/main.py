"""Entry point of the `vfiotask` command.

Each subcommand lives in its own module with a `register(subparsers)` function that adds its
parser and sets `handler`, a function `(args) -> int`.  Errors of the vfiotask family become one
line on stderr and their documented exit status; nothing else is caught here, so a bug still
shows its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any, TextIO

from vfiotask import __version__
from vfiotask.errors import (
    EXIT_USAGE,
    Interrupted,
    NeedsRoot,
    TaskFailed,
    Terminated,
    VfiotaskError,
    describe_exception,
)
from vfiotask.faultinjection import from_environment

# Each command and the module that registers it, in the order help lists them.  A run imports
# only its command's module: importing every module (the engine, the jobs, libvirt's model) cost
# each start of the command about 0.25 s.  Help, or a missing or mistyped command, builds them all.
COMMANDS = {
    "prepin": "prepin",
    "bench": "bench",
    "devices": "devices",
    "bind": "bind",
    "unbind": "bind",
    "hugepages": "hugepages",
    "hook": "hook",
    "tune": "tune",
    "check": "check",
    "config": "config",
    "setup": "setup",
    "recover": "recover",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line and exit 2 like every other bad input, and a
    mistyped option or command is answered with the nearest one (Python 3.11's argparse has no
    suggest_on_error)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"vfiotask: {message}{self._suggestion(message)}; see '{self.prog} --help'\n")

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        """A command's own parser reports the options it does not know, so that the suggestion
        comes from that command's options, not the top level's."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and not self._subcommands():
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def _subcommands(self) -> dict[str, argparse.ArgumentParser]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    def _suggestion(self, message: str) -> str:
        if message.startswith("unrecognized arguments: "):
            options = [o for o in self._option_string_actions if o.startswith("--")]
            for word in message.split(": ", 1)[1].split():
                if word.startswith("--"):
                    close = difflib.get_close_matches(word.split("=", 1)[0], options, n=1, cutoff=0.6)
                    if close:
                        return f" (did you mean {close[0]}?)"
            return ""
        if "invalid choice: " in message:
            word = message.split("invalid choice: ", 1)[1].split(" ", 1)[0].strip("'")
            names = list(self._subcommands()) or [c for a in self._actions for c in (a.choices or ())]
            close = difflib.get_close_matches(word, [str(n) for n in names], n=1, cutoff=0.6)
            if close:
                return f" (did you mean {close[0]}?)"
        return ""


def _add_common(parser: argparse.ArgumentParser, top: bool) -> None:
    """-v and -q before or after the command: the command's copies leave the value the top level
    parsed alone unless they are given."""
    default = 0 if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="count", default=default, help="log more (twice for debug)")
    parser.add_argument("-q", "--quiet", action="count", default=default,
                        help="print only errors: no warnings, no progress line")


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += [sub, *_all_parsers(sub)]
    return found


def command_named(argv: Sequence[str]) -> str | None:
    """The command `argv` runs, when it names one (the top level's options take no values)."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with `command` only the parsers of the module that registers it."""
    parser = _Parser(prog="vfiotask", description="Parallel preparation of VFIO guest memory.")
    parser.add_argument("--version", action="version", version=f"vfiotask {__version__}",
                        help="print the version and exit")
    _add_common(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)
    for name in (COMMANDS[command],) if command in COMMANDS else COMMAND_MODULES:
        module = importlib.import_module(f"vfiotask.integrations.cli.{name}")
        module.register(subparsers)
    for sub in _all_parsers(parser):
        _add_common(sub, top=False)
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
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_named(words))
    args = parser.parse_args(words)
    level = logging.ERROR if args.quiet else logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="vfiotask: %(levelname)s: %(message)s")
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    stdout, sys.stdout = sys.stdout, _GuardedOutput(sys.stdout)
    try:
        from_environment()  # VFIOTASK_FAIL, VFIOTASK_CRASH_AT: refused (exit 2) unless fault_injection is on
        return int(args.handler(args))
    except OutputError as exc:  # `| head`, a full disk: not a bug, so no traceback; before its base class
        os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())  # the exit flush must not fail again
        print(f"vfiotask: {exc.one_line()}", file=sys.stderr)
        return exc.exit_status
    except VfiotaskError as exc:
        if isinstance(exc, TaskFailed) and isinstance(exc.cause, PermissionError):
            exc = NeedsRoot(f"{exc.message} (permission denied)")
        print(f"vfiotask: {exc.one_line()}", file=sys.stderr)
        return exc.exit_status
    except PermissionError as exc:  # a root-only file or interface reached by a normal user: not a bug
        print(f"vfiotask: {NeedsRoot(describe_exception(exc)).one_line()}", file=sys.stderr)
        return NeedsRoot.exit_status
    except Terminated as exc:
        print("vfiotask: terminated; everything taken was released", file=sys.stderr)
        return Interrupted("terminated", signum=exc.signum).exit_status
    except KeyboardInterrupt:
        print("vfiotask: interrupted; everything taken was released", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
