"""`vfiotask tune`: the definition change, the thread policy, and its refusals."""

from __future__ import annotations

import os

import pytest

from tests.conftest import run_cli
from tests.libvirt.xmls import guest_xml
from vfiotask.integrations.libvirt.domain import parse_domain
from vfiotask.integrations.libvirt.tune import diff, policy_threads, tuned

WITH_METADATA = guest_xml("t", 512, config={"threads": "2"}).replace("<vcpu>", "<!-- keep --><vcpu>")


def test_tuning_adds_immediate_allocation_and_keeps_our_namespace_prefix() -> None:
    before, after = tuned(WITH_METADATA, 3)
    domain = parse_domain(after)
    assert (domain.backing.allocation_mode, domain.backing.allocation_threads) == ("immediate", 3)
    assert "vfiotask:config" in after and domain.config.threads == 2
    changes = [line for line in diff(before, after, "t").splitlines() if line[:1] in "+-" and line[:3] not in "+++---"]
    assert changes == ["+  <memoryBacking>", '+    <allocation mode="immediate" threads="3" />', "+  </memoryBacking>"]


def test_file_backed_and_idempotent() -> None:
    _, once = tuned(WITH_METADATA, 2, file_backed=True)
    assert parse_domain(once).backing.file_backed
    before, twice = tuned(once, 2, file_backed=True)
    assert before == twice


def test_policy_threads_stay_within_the_cpus_we_may_use() -> None:
    threads = policy_threads(parse_domain(WITH_METADATA))
    assert 1 <= threads <= min(len(os.sched_getaffinity(0)), 16)


@pytest.mark.parametrize(("args", "needle"), [
    (["--domain", "x", "--threads", "0"], "--threads"),
    (["--domain", "x", "--threads", "99"], "--threads"),
    (["--domain", "x", "--threads", "\u00b2"], "--threads"),
    (["--domain", "a/b"], "not usable"),
    ([], "--domain"),
    (["--domain", "x", "--prepared", "--threads", "4"], "--threads do not apply to tune --prepared"),
    (["--domain", "x", "--prepared", "--undo", "--json"], "--json do not apply to tune --prepared"),
    (["--domain", "x", "--prepared", "--file-backed", "--threads", "\u00b2"], "--threads, --file-backed do not"),
])
def test_bad_input_exits_2(args: list[str], needle: str) -> None:
    result = run_cli("tune", *args)
    assert result.returncode == 2 and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_without_libvirtd_the_error_says_so() -> None:
    import psutil

    if any(p.info["name"] in ("libvirtd", "virtqemud") for p in psutil.process_iter(["name"])):
        pytest.skip("libvirtd is running here")
    result = run_cli("tune", "--domain", "x", "--dry-run", "--uri", "qemu:///system")
    assert result.returncode == 1
    assert result.stderr.startswith("vfiotask: cannot connect to libvirt") and "start libvirtd" in result.stderr


def test_prepared_moves_hugepages_to_a_shared_file_keeping_page_size_and_nodes() -> None:
    from vfiotask.integrations.libvirt.tune import prepared

    numa = "<numatune><memory mode='strict' nodeset='0'/></numatune><vcpu>"
    xml = guest_xml("h", 512, hugepages="2048", immediate=True).replace("<vcpu>", numa, 1)
    before, after = prepared(xml, 2 << 20)
    domain = parse_domain(after)
    assert domain.backing.file_backed and not domain.backing.uses_hugepages
    assert domain.backing.access_mode == "shared" and domain.backing.allocation_mode == "immediate"
    assert domain.numatune.nodeset == (0,)
    assert prepared(after, 2 << 20)[0] == prepared(after, 2 << 20)[1]  # idempotent
    assert "hugepages" in before and "hugepages" not in after


def test_prepared_refuses_to_change_a_guests_page_size() -> None:
    from vfiotask.errors import UsageError
    from vfiotask.integrations.libvirt.tune import prepared

    with pytest.raises(UsageError, match=r"uses 1\.0 GiB hugepages but memory_backing_dir is on 2\.0 MiB"):
        prepared(guest_xml("g", 2048, hugepages="1048576"), 2 << 20)
    with pytest.raises(UsageError, match="tmpfs"):
        prepared(guest_xml("g", 2048, hugepages="2048"), None)


def test_prepared_gives_anonymous_ram_a_file() -> None:
    from vfiotask.integrations.libvirt.tune import prepared

    _, after = prepared(guest_xml("a", 512), 2 << 20)
    assert parse_domain(after).backing.file_backed
