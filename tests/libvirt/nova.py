"""Domain definitions shaped as OpenStack Nova's libvirt driver writes them.

Nova builds the XML in nova/virt/libvirt/config.py: its `<nova:instance>` metadata (namespace
http://openstack.org/xmlns/libvirt/nova/1.1) with package, name, creationTime, flavor and its
extra specs, image, owner, root and ports; `<sysinfo type='smbios'>` naming OpenStack Nova;
`<os>` with `<smbios mode='sysinfo'/>`; `<cputune><shares>`; PCI devices as
`<hostdev mode='subsystem' type='pci' managed='yes'>`; and with `[libvirt] file_backed_memory`
set, `<memoryBacking>` with `<source type='file'/><access mode='shared'/>
<allocation mode='immediate'/><discard/>` (driver.py, _get_guest_memory_backing_config).
`as_libvirt_runs_it` adds what libvirtd puts in the XML the hook reads: the domain's id,
`<driver name='vfio'/>`, aliases and guest addresses on the hostdevs, and the DAC `<seclabel>`.
"""

from __future__ import annotations

from collections.abc import Sequence

NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
INSTANCE_UUID = "9b1c2f4e-5a3d-4c1e-8f0a-2d6e7b8c9a01"


def nova_instance_xml(
    name: str = "instance-0000002a",
    memory_mib: int = 64,
    *,
    hostdevs: Sequence[str] = (),
    file_backed: bool = True,
    hugepages_kib: int | None = None,
    uuid: str = INSTANCE_UUID,
    emulator: str = "/usr/bin/qemu-system-x86_64",
    console_log: str | None = None,
    cpu_mode: str = "host-model",
) -> str:
    """An instance as Nova defines it; `hostdevs` are host PCI addresses like 0000:01:00.0, and
    `console_log` replaces Nova's /var/lib/nova/instances/UUID/console.log (virtlogd opens it),
    `cpu_mode` is nova.conf's `[libvirt] cpu_mode` (host-model, Nova's default for KVM; none
    writes only the topology, and is what a nested guest without the host's MSRs can start)."""
    mode = {"none": "", "host-model": ' mode="host-model" match="exact"'}.get(cpu_mode, f' mode="{cpu_mode}"')
    backing = []
    if hugepages_kib is not None:  # a flavor with hw:mem_page_size (Nova refuses it with file_backed_memory)
        backing.append(f"    <hugepages>\n      <page size=\"{hugepages_kib}\" nodeset=\"0\" unit=\"KiB\"/>\n"
                       "    </hugepages>")
    if file_backed:
        backing += ["    <source type=\"file\"/>", "    <access mode=\"shared\"/>",
                    "    <allocation mode=\"immediate\"/>", "    <discard/>"]
    memory_backing = f"  <memoryBacking>\n{chr(10).join(backing)}\n  </memoryBacking>\n" if backing else ""
    extra_specs = "".join(f"\n          <nova:extraSpec name=\"{key}\">{value}</nova:extraSpec>" for key, value in (
        ("pci_passthrough:alias", f"gpu:{len(hostdevs)}") if hostdevs else ("hw_rng:allowed", "true"),
    ))
    devices = [f"    <emulator>{emulator}</emulator>"]
    for address in hostdevs:
        domain, bus, rest = address.split(":")
        slot, function = rest.split(".")
        devices.append(
            "    <hostdev mode=\"subsystem\" type=\"pci\" managed=\"yes\">\n      <source>\n"
            f"        <address domain=\"0x{domain}\" bus=\"0x{bus}\" slot=\"0x{slot}\" function=\"0x{function}\"/>\n"
            "      </source>\n    </hostdev>")
    log = console_log or f"/var/lib/nova/instances/{uuid}/console.log"
    devices += [f"    <serial type=\"pty\">\n      <log file=\"{log}\" append=\"off\"/>\n    </serial>",
                "    <video>\n      <model type=\"none\"/>\n    </video>",
                "    <memballoon model=\"virtio\">\n      <stats period=\"10\"/>\n    </memballoon>"]
    return f"""<domain type="kvm">
  <uuid>{uuid}</uuid>
  <name>{name}</name>
  <memory>{memory_mib * 1024}</memory>
  <metadata>
    <nova:instance xmlns:nova="{NOVA_NS}">
      <nova:package version="29.0.1"/>
      <nova:name>gpu-worker-1</nova:name>
      <nova:creationTime>2024-05-02 09:14:27</nova:creationTime>
      <nova:flavor name="g1.small" id="5c0f4a8e-1b7e-4c52-9f1c-6f1b7c3e2d10">
        <nova:memory>{memory_mib}</nova:memory>
        <nova:disk>1</nova:disk>
        <nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral>
        <nova:vcpus>1</nova:vcpus>
        <nova:extraSpecs>{extra_specs}
        </nova:extraSpecs>
      </nova:flavor>
      <nova:image uuid="2f6a1c3b-7d4e-4b0a-9e1f-0a2b3c4d5e6f">
        <nova:containerFormat>bare</nova:containerFormat>
        <nova:diskFormat>qcow2</nova:diskFormat>
        <nova:minDisk>1</nova:minDisk>
        <nova:minRam>0</nova:minRam>
        <nova:properties/>
      </nova:image>
      <nova:owner>
        <nova:user uuid="3472c2a6de914fb5b61842bc781ef670">admin</nova:user>
        <nova:project uuid="f241e906010e4917ae8153f4fb8aa021">admin</nova:project>
      </nova:owner>
      <nova:root type="image" uuid="2f6a1c3b-7d4e-4b0a-9e1f-0a2b3c4d5e6f"/>
      <nova:ports/>
    </nova:instance>
  </metadata>
{memory_backing}  <vcpu>1</vcpu>
  <sysinfo type="smbios">
    <system>
      <entry name="manufacturer">OpenStack Foundation</entry>
      <entry name="product">OpenStack Nova</entry>
      <entry name="version">29.0.1</entry>
      <entry name="serial">{uuid}</entry>
      <entry name="uuid">{uuid}</entry>
      <entry name="family">Virtual Machine</entry>
    </system>
  </sysinfo>
  <os>
    <type machine="q35">hvm</type>
    <boot dev="hd"/>
    <smbios mode="sysinfo"/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cputune>
    <shares>1024</shares>
  </cputune>
  <clock offset="utc">
    <timer name="pit" tickpolicy="delay"/>
    <timer name="rtc" tickpolicy="catchup"/>
    <timer name="hpet" present="no"/>
  </clock>
  <cpu{mode}>
    <topology sockets="1" cores="1" threads="1"/>
  </cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
{chr(10).join(devices)}
  </devices>
</domain>
"""


def as_libvirt_runs_it(xml: str, domain_id: int, dac: str = "+64055:+64055") -> str:
    """The definition as libvirtd hands it to the hook at `start begin` (a superset of what
    `prepare begin` gets): the domain's id, each hostdev's vfio driver, alias and guest address,
    and the DAC label QEMU runs as."""
    xml = xml.replace('<domain type="kvm">', f"<domain type='kvm' id='{domain_id}'>", 1)
    index = 0
    while '<hostdev mode="subsystem" type="pci" managed="yes">\n      <source>' in xml:
        xml = xml.replace(
            '<hostdev mode="subsystem" type="pci" managed="yes">\n      <source>',
            "<hostdev mode='subsystem' type='pci' managed='yes'>\n      <driver name='vfio'/>\n      <source>", 1)
        xml = xml.replace(
            "      </source>\n    </hostdev>",
            f"      </source>\n      <alias name='hostdev{index}'/>\n      <address type='pci' domain='0x0000' "
            f"bus='0x{index + 5:02x}' slot='0x00' function='0x0'/>\n    </hostdev>", 1)
        index += 1
    return xml.replace("</devices>\n", "</devices>\n  <seclabel type='dynamic' model='dac' relabel='yes'>\n"
                       f"    <label>{dac}</label>\n    <imagelabel>{dac}</imagelabel>\n  </seclabel>\n", 1)


def pci_gpu(*functions: str) -> list[str]:
    """The GPU of the fixture trees (fixtures/sysfs/viable: group 2 is 0000:01:00.0 and .1)."""
    return [f"0000:01:00.{function}" for function in functions or ("0", "1")]
