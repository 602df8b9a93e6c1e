#!/bin/busybox sh
# PID 1 of the nested guest: load the modules, mount the host's root read-only over virtio-9p
# with tmpfs where programs write, run the host's run.sh inside it, report, power off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "vfiotask-guest: $*"; }
while read -r module; do
    insmod "/lib/modules/$module.ko" || say "insmod $module failed"
done < /modules.order
if mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host; then
    mount -t tmpfs -o mode=1777 tmpfs /host/tmp
    mount -t tmpfs -o mode=755 tmpfs /host/run
    mount -t proc proc /host/proc
    mount -t sysfs sysfs /host/sys
    mount -t devtmpfs devtmpfs /host/dev
    mkdir -p /host/dev/shm /host/tmp/results
    mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /host/tmp/results
    # The checkout may lie below a directory the tmpfs mounts above hide (/tmp, /run): mount it
    # again at its own path.
    checkout=$(cat /host/tmp/results/checkout)
    mkdir -p "/host$checkout" 2>/dev/null
    mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose checkout "/host$checkout" \
        || say "cannot mount the checkout at $checkout"
    say "running run.sh"
    chroot /host /bin/sh /tmp/results/run.sh
    say "run.sh exit $?"
    sync
    umount "/host$checkout" 2>/dev/null
    umount /host/tmp/results
else
    say "cannot mount the host's root"
fi
poweroff -f
