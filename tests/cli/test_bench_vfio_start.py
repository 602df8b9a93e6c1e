"""`vfiotask bench vfio-start`: its reading of ftrace, its care of the tracer, and its refusals.

The suite itself runs in the nested guest, on a real libvirtd with a real type1 container
(tests/nested/guest/check_libvirt.py); here, the parts that need neither.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli
from vfiotask.errors import HostStateError
from vfiotask.integrations.bench.ftrace import VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA, MapTracer, of_process, parse

# function_graph output of a QEMU start in the nested guest (trimmed): the main thread (227) sets
# the container up and maps RAM; once the guest runs, its vCPU thread (232) unmaps and maps again.
TRACE = """\
# tracer: function_graph
#
# CPU  TASK/PID         DURATION                  FUNCTION CALLS
# |     |    |           |   |                     |   |   |   |
 1)  qemu-sy-227   |               |  vfio_iommu_type1_ioctl [vfio_iommu_type1]() {
 1)  qemu-sy-227   |               |  /* ioctl: PROBE cmd=15205 size=0 */
 1)  qemu-sy-227   | # 3373.404 us |  }
 1)  qemu-sy-227   |               |  vfio_iommu_type1_ioctl [vfio_iommu_type1]() {
 1)  qemu-sy-227   |               |  /* ioctl: PROBE cmd=15217 size=786432 */
 1)  qemu-sy-227   | @ 27201.55 us |  }
 0)  qemu-sy-227   |               |  /* ioctl: PROBE cmd=15217 size=66060288 */
 0)  qemu-sy-227   |               |  vfio_iommu_type1_ioctl [vfio_iommu_type1]() {
 1)  qemu-sy-227   | $ 591034 us   |  }
 ------------------------------------------
 1)  qemu-sy-227   =>  CPU 0/T-232
 ------------------------------------------
 1)  CPU 0/T-232   | + 43.105 us   |  vfio_iommu_type1_ioctl [vfio_iommu_type1]();
 1)  CPU 0/T-232   |               |  vfio_iommu_type1_ioctl [vfio_iommu_type1]() {
 1)  CPU 0/T-232   |               |  /* ioctl: PROBE cmd=15218 size=0 */
 1)  CPU 0/T-232   | # 4305.110 us |  }
 1)  other-99      |               |  vfio_iommu_type1_ioctl [vfio_iommu_type1]() {
 1)  other-99      |               |  /* ioctl: PROBE cmd=15217 size=4096 */
 1)  other-99      |   5.010 us    |  }
"""


def test_parse_reads_each_ioctl_with_its_command_size_and_the_kernels_time() -> None:
    calls = parse(TRACE)
    assert [(c.pid, c.cmd, pytest.approx(c.seconds, rel=1e-9)) for c in calls] == [
        (227, 0x3B65, 0.003373404),
        (227, VFIO_IOMMU_MAP_DMA, 0.02720155),
        (227, VFIO_IOMMU_MAP_DMA, 0.591034),  # the event came before the opening line, on another CPU
        (232, None, 0.000043105),  # its event was lost: a call is never given another call's command
        (232, VFIO_IOMMU_UNMAP_DMA, 0.00430511),
        (99, VFIO_IOMMU_MAP_DMA, 0.00000501),
    ]
    qemu = [c for c in of_process(calls, {227, 232}) if c.is_map]
    assert [c.size for c in qemu] == [786432, 66060288]


def fake_tracefs(root: Path, tracer: str = "nop") -> dict[str, str]:
    """The files MapTracer reads and writes, as a kernel shows them before anyone traced."""
    files = {
        "available_filter_functions": "vfio_iommu_type1_ioctl [vfio_iommu_type1]\nvfio_pin_pages_remote [x]\n",
        "current_tracer": f"{tracer}\n", "tracing_on": "1\n", "max_graph_depth": "0\n",
        "set_graph_function": "#### all functions enabled ####\n",
        "set_ftrace_filter": "#### all functions enabled ####\n", "options/funcgraph-proc": "0\n",
        "kprobe_events": "", "trace": "", "events/vfiotask_bench/ioctl/enable": "0\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return files


def test_the_tracer_refuses_while_another_tracer_is_set_and_changes_nothing(tmp_path: Path) -> None:
    before = fake_tracefs(tmp_path, tracer="function")
    with pytest.raises(HostStateError, match="current_tracer is function"), MapTracer(tmp_path):
        pass
    assert {name: (tmp_path / name).read_text() for name in before} == before


def test_the_tracer_sets_function_graph_on_the_ioctl_and_puts_everything_back(tmp_path: Path) -> None:
    fake_tracefs(tmp_path)
    with MapTracer(tmp_path) as tracer:
        assert (tmp_path / "current_tracer").read_text() == "function_graph"
        assert (tmp_path / "set_graph_function").read_text() == "vfio_iommu_type1_ioctl"
        assert (tmp_path / "max_graph_depth").read_text() == "1"
        assert (tmp_path / "kprobe_events").read_text().startswith("p:vfiotask_bench/ioctl vfio_iommu_type1_ioctl ")
        tracer.start()
        (tmp_path / "trace").write_text(TRACE)
        assert len(tracer.stop()) == 6
    assert (tmp_path / "current_tracer").read_text() == "nop"
    assert (tmp_path / "tracing_on").read_text() == "1"
    assert (tmp_path / "max_graph_depth").read_text() == "0"
    assert (tmp_path / "options/funcgraph-proc").read_text() == "0"
    assert (tmp_path / "set_graph_function").read_text() == ""  # empty: every function, as before
    assert (tmp_path / "kprobe_events").read_text().splitlines()[-1] == "-:vfiotask_bench/ioctl"


def test_a_kernel_without_the_type1_ioctl_is_refused(tmp_path: Path) -> None:
    fake_tracefs(tmp_path)
    (tmp_path / "available_filter_functions").write_text("iommufd_fops_ioctl [iommufd]\n")
    with pytest.raises(HostStateError, match="cannot trace vfio_iommu_type1_ioctl"), MapTracer(tmp_path):
        pass


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["vfio-start"], "bench vfio-start needs --device"),
        (["vfio-start", "--device", "0000:ff:1f.7"], "no PCI device 0000:ff:1f.7"),
        (["vfio-start", "--device", "0000:00:01.0", "--threads", "2"], "--threads do not apply to bench vfio-start"),
        (["libvirt", "--uri", "qemu:///system"], "--uri do not apply to bench libvirt"),
    ],
)
def test_bad_options_are_refused_in_one_line_before_anything_starts(args: list[str], words: str) -> None:
    result = run_cli("bench", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vfiotask: ") and words in lines[0], lines
