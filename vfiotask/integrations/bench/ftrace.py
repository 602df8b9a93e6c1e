"""The kernel's own time in VFIO type1 ioctls, per call, from ftrace.

function_graph times `vfio_iommu_type1_ioctl` (depth 1: the call alone, not its children, so the
tracer adds one entry and one exit per ioctl however many pages a map pins), and a kprobe event
on the same function records each call's command and, for a map, its size.  Output lines carry
the task's pid, so calls of one process are picked out afterwards.  `vfio_dma_do_map` itself is
inlined into the ioctl on Debian's kernels, so the ioctl is the function that can be traced.

The tracer is global (function_graph has no per-instance use before Linux 6.12): `MapTracer`
refuses to start while another tracer is set, saves every setting it changes and puts them back
on exit, also on failure.  Test and benchmark support, as the rest of `bench`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from vfiotask.errors import HostStateError

TRACEFS = Path("/sys/kernel/tracing")
FUNCTION = "vfio_iommu_type1_ioctl"
EVENT_GROUP = "vfiotask_bench"
EVENT = "ioctl"
VFIO_IOMMU_MAP_DMA = 0x3B71
VFIO_IOMMU_UNMAP_DMA = 0x3B72
# The ioctl's arguments: (void *iommu_data, unsigned int cmd, unsigned long arg); a map's
# struct vfio_iommu_type1_dma_map has its u64 size at offset 24 of the user's copy.
PROBE_WITH_SIZE = f"p:{EVENT_GROUP}/{EVENT} {FUNCTION} cmd=$arg2:u32 size=+u24($arg3):u64"
PROBE = f"p:{EVENT_GROUP}/{EVENT} {FUNCTION} cmd=$arg2:u32"
SETTINGS = ("tracing_on", "current_tracer", "set_graph_function", "set_ftrace_filter", "max_graph_depth",
            "options/funcgraph-proc")

_LINE = re.compile(r"^\s*\d+\)\s+(?P<task>.*?)-(?P<pid>\d+)\s+\|\s*(?:[+!#*@$]\s*)?(?:(?P<us>\d+(?:\.\d+)?) us\s*)?"
                   r"\|\s*(?P<what>.*?)\s*$")
_EVENT = re.compile(rf"{EVENT}: .*?cmd=(?P<cmd>\d+)(?: size=(?P<size>\d+))?")


class IoctlCall(NamedTuple):
    pid: int
    cmd: int | None  # None when the event was lost (a full buffer)
    size: int | None
    seconds: float

    @property
    def is_map(self) -> bool:
        return self.cmd == VFIO_IOMMU_MAP_DMA


def parse(text: str) -> list[IoctlCall]:
    """Every completed ioctl in function_graph output with funcgraph-proc and the kprobe event.

    A call is one line (`FUNCTION();` with its duration) or an opening line, the event, and a
    closing `}` with the duration; the event may come before the opening line.  Lines are
    matched by pid, since a call that sleeps can end on another CPU.
    """
    pending: dict[int, tuple[int | None, int | None]] = {}
    calls = []
    for line in text.splitlines():
        found = _LINE.match(line)
        if found is None:
            continue
        pid, what, micros = int(found["pid"]), found["what"], found["us"]
        event = _EVENT.search(what) if what.startswith("/*") else None
        if event is not None:
            size = int(event["size"]) if event["size"] is not None else None
            pending[pid] = (int(event["cmd"]), size)
            continue
        ends = what == "}" or (what.startswith(FUNCTION) and what.endswith(";"))
        if ends and micros is not None:
            cmd, size = pending.pop(pid, (None, None))
            calls.append(IoctlCall(pid, cmd, size, float(micros) / 1e6))
    return calls


class MapTracer:
    """function_graph on the type1 ioctl and its kprobe event, for a `with` block; `record()`
    returns the calls made while it was on."""

    def __init__(self, root: Path = TRACEFS) -> None:
        self.root = root
        self.saved: dict[str, str] = {}
        self.probe_added = False
        self.with_size = True

    def _read(self, name: str) -> str:
        return (self.root / name).read_text()

    def _write(self, name: str, value: str) -> None:
        try:
            with open(self.root / name, "w") as handle:
                handle.write(value)
        except OSError as exc:
            raise HostStateError(f"cannot write {value.strip()!r} to {self.root / name}: {exc.strerror}",
                                 hint="run as root with tracefs mounted (mount -t tracefs nodev /sys/kernel/tracing)") \
                from exc

    def __enter__(self) -> MapTracer:
        functions = self.root / "available_filter_functions"
        if not functions.is_file():
            raise HostStateError(f"no tracefs at {self.root}",
                                 hint="run as root; mount it with: mount -t tracefs nodev /sys/kernel/tracing")
        if not any(line.split()[0] == FUNCTION for line in _lines_naming(functions, FUNCTION)):
            raise HostStateError(f"the kernel cannot trace {FUNCTION}",
                                 hint="load vfio_iommu_type1 (QEMU's iommufd backend is not measured by this suite)")
        tracer = self._read("current_tracer").strip()
        if tracer != "nop":
            raise HostStateError(f"ftrace is in use: current_tracer is {tracer}",
                                 hint="wait for whoever traces to finish, or: echo nop > current_tracer")
        try:
            self.saved = {name: self._read(name) for name in SETTINGS}
            self._write("tracing_on", "0")
            self._add_probe()
            self._write(f"events/{EVENT_GROUP}/{EVENT}/enable", "1")
            self._write("set_ftrace_filter", FUNCTION)
            self._write("set_graph_function", FUNCTION)
            self._write("max_graph_depth", "1")
            self._write("options/funcgraph-proc", "1")
            self._write("current_tracer", "function_graph")
            self._write("trace", "")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _append(self, name: str, line: str) -> None:
        """One line added to a tracefs list.  Not open(..., "a"): Python seeks to the end of a file
        opened for appending, and tracefs' lists refuse SEEK_END with EINVAL."""
        fd = os.open(self.root / name, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def _add_probe(self) -> None:
        for definition in (PROBE_WITH_SIZE, PROBE):
            try:
                self._append("kprobe_events", definition)
            except OSError as exc:
                if definition == PROBE:
                    raise HostStateError(f"cannot add a kprobe event on {FUNCTION}: {exc.strerror}",
                                         hint="a kernel with CONFIG_KPROBE_EVENTS is needed") from exc
                continue
            self.probe_added = True
            self.with_size = definition == PROBE_WITH_SIZE
            return

    def start(self) -> None:
        self._write("trace", "")
        self._write("tracing_on", "1")

    def stop(self) -> list[IoctlCall]:
        self._write("tracing_on", "0")
        return parse(self._read("trace"))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        errors = []
        steps = [("tracing_on", "0"), ("current_tracer", "nop"), (f"events/{EVENT_GROUP}/{EVENT}/enable", "0")]
        for name, value in steps:
            try:
                self._write(name, value)
            except HostStateError as error:
                if name != f"events/{EVENT_GROUP}/{EVENT}/enable" or self.probe_added:
                    errors.append(str(error))
        if self.probe_added:
            try:
                self._append("kprobe_events", f"-:{EVENT_GROUP}/{EVENT}")
                self.probe_added = False
            except OSError as error:
                errors.append(f"removing the kprobe event: {error.strerror}")
        for name in ("set_ftrace_filter", "set_graph_function"):
            if name in self.saved:
                self._restore_list(name, self.saved[name], errors)
        for name in ("max_graph_depth", "options/funcgraph-proc", "current_tracer", "tracing_on"):
            if name in self.saved:
                try:
                    self._write(name, self.saved[name].strip() or "0")
                except HostStateError as error:
                    errors.append(str(error))
        if errors and kind is None:
            raise HostStateError("could not put ftrace back: " + "; ".join(errors),
                                 hint=f"check {self.root} (echo nop > current_tracer)")

    def _restore_list(self, name: str, saved: str, errors: list[str]) -> None:
        """A filter list as it was: empty means every function ('#' lines are the kernel's comments)."""
        wanted = [line for line in saved.splitlines() if line and not line.startswith("#")]
        try:
            self._write(name, "")
            for entry in wanted:
                self._append(name, entry.split()[0])
        except (OSError, HostStateError) as error:
            errors.append(f"restoring {name}: {error}")


def _lines_naming(path: Path, needle: str) -> Iterable[str]:
    with open(path) as handle:
        for line in handle:
            if needle in line:
                yield line


def of_process(calls: Iterable[IoctlCall], tids: Collection[int]) -> list[IoctlCall]:
    return [call for call in calls if call.pid in tids]
