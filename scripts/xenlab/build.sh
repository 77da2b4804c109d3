#!/usr/bin/env bash
# Builds the Xen lab from Debian packages: a dom0 (Xen 4.17 + Debian's dom0 kernel) that
# boots as a QEMU guest, a guest kernel and initramfs (Debian's cloud kernel: PV and PVH),
# and bootable guest images (head, worker, a second VO's worker) on one base OS.
#
#   sudo scripts/xenlab/build.sh            # everything, cached in $VW_XENLAB_CACHE
#   sudo scripts/xenlab/build.sh dom0       # one part: base dom0 kernel images
#
# Each step leaves a marker and is skipped when its marker is newer than its inputs,
# so a second run is quick. The cache (default /var/cache/vw-xenlab) holds:
#   base/                debootstrap --variant=minbase bookworm
#   dom0/ dom0.img       the dom0 tree and its disk; boot/xen.elf vmlinuz initrd.img
#   guest-*/             guest trees; kernels/vmlinuz-vw-guest initrd-vw-guest.img
#   images/{head,worker,vo2worker,guest-base}.img   ext4 root partitions, sizes as in
#                        the paper (guest-base: the base OS alone, for the testnet)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
C=${VW_XENLAB_CACHE:-/var/cache/vw-xenlab}
SUITE=${VW_XENLAB_SUITE:-bookworm}
mkdir -p "$C"
log() { echo "xenlab: $*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "run as root (debootstrap, chroot)"; exit 1; }

# Is the marker newer than this script and every file under the given inputs?
fresh() { # marker inputs...
  local marker=$1; shift
  [ -e "$marker" ] || return 1
  [ -z "$(find "$here/build.sh" "$@" -newer "$marker" -print -quit)" ]
}

# Unmounts whatever a chroot step mounted, on any exit.
mounted=()
cleanup() { for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done; }
trap cleanup EXIT

# apt-get install in a chroot with daemons kept from starting.
chroot_install() { # tree packages...
  local t=$1; shift
  printf '#!/bin/sh\nexit 101\n' > "$t/usr/sbin/policy-rc.d"; chmod +x "$t/usr/sbin/policy-rc.d"
  mount -t proc proc "$t/proc"; mounted+=("$t/proc")
  cp /etc/resolv.conf "$t/etc/resolv.conf"
  chroot "$t" env DEBIAN_FRONTEND=noninteractive apt-get -qq update
  chroot "$t" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends -o Dpkg::Use-Pty=0 "$@" > "$t.apt.log" 2>&1 \
    || { tail -30 "$t.apt.log" >&2; return 1; }
  chroot "$t" apt-get clean
  rm -rf "$t"/var/lib/apt/lists/*
  umount "$t/proc"
  rm -f "$t/usr/sbin/policy-rc.d"
}

# A copy of base with packages; rebuilt when its marker is stale.
tree() { # name packages...
  local name=$1; shift
  if [ -e "$C/$name/.vw-packages" ] && [ "$(cat "$C/$name/.vw-packages")" = "$*" ]; then return 0; fi
  log "tree $name: $*"
  rm -rf "$C/$name" "$C/$name.tmp"
  cp -a "$C/base" "$C/$name.tmp"
  chroot_install "$C/$name.tmp" "$@"
  echo "$*" > "$C/$name.tmp/.vw-packages"
  mv "$C/$name.tmp" "$C/$name"
}

base() {
  [ -e "$C/base/.vw-done" ] && return 0
  log "debootstrap $SUITE (minbase)"
  rm -rf "$C/base.tmp"
  debootstrap --variant=minbase "$SUITE" "$C/base.tmp" > "$C/debootstrap.log" 2>&1 \
    || { tail -20 "$C/debootstrap.log" >&2; exit 1; }
  touch "$C/base.tmp/.vw-done"
  rm -rf "$C/base"; mv "$C/base.tmp" "$C/base"
}

# ---- dom0 -------------------------------------------------------------------------
DOM0_PKGS="xen-system-amd64 xen-utils-4.17 xen-hypervisor-4.17-amd64 linux-image-amd64
  initramfs-tools systemd-sysv udev kmod iproute2 bridge-utils procps e2fsprogs util-linux
  dosfstools mtools libstdc++6 xenstore-utils openssh-client"
dom0() {
  tree dom0-tree $DOM0_PKGS
  fresh "$C/dom0.img.done" "$here/dom0" "$C/guest-base.done" && return 0
  local R=$C/dom0-tree
  log "dom0 configuration and disk"
  echo xendom0 > "$R/etc/hostname"
  # Each boot makes its own machine id (one shared by every host gave their bridges
  # the same MAC).
  : > "$R/etc/machine-id"; rm -f "$R/var/lib/dbus/machine-id"
  printf '127.0.0.1 localhost\n' > "$R/etc/hosts"
  printf 'LABEL=vwdom0 / ext4 errors=remount-ro 0 1\n' > "$R/etc/fstab"
  chroot "$R" sh -c 'echo root:vwlab | chpasswd'
  # Every guest's console goes to /var/log/xen/console/guest-NAME.log (vw reads its tail).
  sed -i '/^XENCONSOLED_ARGS=/d' "$R/etc/default/xen"
  echo 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"' >> "$R/etc/default/xen"
  mkdir -p "$R/var/log/xen/console"
  install -m 0755 "$here/dom0/vwlab-boot" "$R/usr/local/sbin/vwlab-boot"
  install -m 0644 "$here/dom0/vwlab.service" "$R/etc/systemd/system/vwlab.service"
  ln -sf /etc/systemd/system/vwlab.service "$R/etc/systemd/system/multi-user.target.wants/vwlab.service"
  # A getty on hvc0 only when the lab is used by hand.
  mkdir -p "$R/etc/systemd/system/serial-getty@hvc0.service.d"
  printf '[Unit]\nConditionKernelCommandLine=!vwlab.run\n' \
    > "$R/etc/systemd/system/serial-getty@hvc0.service.d/lab.conf"
  rm -f "$R"/etc/systemd/system/timers.target.wants/*
  # vw owns the domains: no saving or shutting them down behind its back at poweroff.
  ln -sf /dev/null "$R/etc/systemd/system/xendomains.service"
  # Small initramfs: MODULES=most is 130 MB unpacked and doubles the boot time.
  sed -i 's/^MODULES=.*/MODULES=list/' "$R/etc/initramfs-tools/initramfs.conf"
  printf 'virtio_pci\nvirtio_blk\next4\n' > "$R/etc/initramfs-tools/modules"
  # nbd: vw's lazy disks (the package's modules-load.d says the same).
  printf '9p\n9pnet_virtio\nvirtio_net\nxen-netback\nxen-blkback\nnbd\n' > "$R/etc/modules"
  local kv; kv=$(ls "$R/lib/modules" | sort -V | tail -1)
  mount -t proc proc "$R/proc"; mounted+=("$R/proc")
  chroot "$R" update-initramfs -u -k "$kv" >/dev/null
  umount "$R/proc"
  mkdir -p "$C/boot"
  zcat "$R/boot/xen-4.17-amd64.gz" > "$C/boot/xen.elf"
  cp "$R/boot/vmlinuz-$kv" "$C/boot/vmlinuz"
  cp "$R/boot/initrd.img-$kv" "$C/boot/initrd.img"
  # The guest kernel dom0 hands to guests (the cluster config's kernel directory).
  mkdir -p "$R/var/lib/vw-kernels"
  cp "$C/kernels/vmlinuz-vw-guest" "$C/kernels/initrd-vw-guest.img" "$R/var/lib/vw-kernels/"
  rm -f "$C/dom0.img"
  mkfs.ext4 -q -F -L vwdom0 -d "$R" "$C/dom0.img" 16G
  touch "$C/dom0.img.done"
}

# ---- guests -----------------------------------------------------------------------
# dbus: slurmd's cgroup v2 plugin asks systemd for its scope over D-Bus. cloud-init:
# the `seed` integration strategy (vw's NoCloud volume); net-tools: the `route` that
# cloud-init 22.4's ifupdown renderer writes for routes.
GUEST_PKGS="linux-image-cloud-amd64 initramfs-tools systemd-sysv udev kmod ifupdown
  iproute2 iputils-ping procps xenstore-utils e2fsprogs util-linux munge openssh-server dbus
  cloud-init net-tools"
guest_base() {
  tree guest-base $GUEST_PKGS
  fresh "$C/guest-base.done" "$here/guest" && return 0
  local R=$C/guest-base
  log "guest base: kernel, initramfs, vw-ready"
  local kv; kv=$(ls "$R/lib/modules" | sort -V | tail -1)
  # NICs keep kernel names (eth0 = the first vif), as vw's network config expects; the
  # initramfs copies this too, so it comes first.
  mkdir -p "$R/etc/systemd/network"
  ln -sf /dev/null "$R/etc/systemd/network/99-default.link"
  sed -i 's/^MODULES=.*/MODULES=list/' "$R/etc/initramfs-tools/initramfs.conf"
  # Both front ends load in the initramfs: under emulation udev took up to 12 minutes
  # to load xen-netfront from the root file system when hosts were busy.
  printf 'xen-blkfront\nxen-netfront\n' > "$R/etc/initramfs-tools/modules"
  mount -t proc proc "$R/proc"; mounted+=("$R/proc")
  chroot "$R" update-initramfs -u -k "$kv" >/dev/null
  umount "$R/proc"
  mkdir -p "$C/kernels"
  cp "$R/boot/vmlinuz-$kv" "$C/kernels/vmlinuz-vw-guest"
  cp "$R/boot/initrd.img-$kv" "$C/kernels/initrd-vw-guest.img"
  printf 'LABEL=vwroot / ext4 errors=remount-ro 0 1\n' > "$R/etc/fstab"
  # cloud-init writes the seed's network config to interfaces.d (vw's edits replace
  # this file whole).
  printf 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n' \
    > "$R/etc/network/interfaces"
  install -m 0644 "$here/guest/90-vw.cfg" "$R/etc/cloud/cloud.cfg.d/90-vw.cfg"
  # No manuals or documentation in guests (copyright files stay), now or from the
  # packages the head and workers add: it keeps the images near the paper's sizes.
  printf 'path-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\npath-exclude=/usr/share/man/*\n' \
    > "$R/etc/dpkg/dpkg.cfg.d/vw-nodoc"
  find "$R/usr/share/doc" -type f ! -name copyright -delete
  rm -rf "$R"/usr/share/man/*
  echo vwguest > "$R/etc/hostname"
  # Every guest makes its own machine id at first boot.
  : > "$R/etc/machine-id"; rm -f "$R/var/lib/dbus/machine-id"
  chroot "$R" sh -c 'echo root:vwlab | chpasswd'
  install -m 0755 "$here/guest/vw-ready" "$R/usr/local/sbin/vw-ready"
  install -m 0644 "$here/guest/vw-ready.service" "$R/etc/systemd/system/vw-ready.service"
  ln -sf /etc/systemd/system/vw-ready.service "$R/etc/systemd/system/multi-user.target.wants/vw-ready.service"
  rm -f "$R"/etc/systemd/system/timers.target.wants/*
  # ifupdown-pre waits for udev to settle, which failed after minutes under emulation;
  # the NICs come from the initramfs, so networking need not wait for it.
  ln -sf /dev/null "$R/etc/systemd/system/ifupdown-pre.service"
  # Emulated Xen is slow: udev can take minutes to announce a disk (the default 90 s
  # wait dropped the swap partition when the machine was busy).
  mkdir -p "$R/etc/systemd/system.conf.d"
  printf '[Manager]\nDefaultDeviceTimeoutSec=900\nDefaultTimeoutStartSec=900\n' \
    > "$R/etc/systemd/system.conf.d/vwlab-slow.conf"
  # The lab reaches guests over ssh with its own key (made once, kept in the cache).
  # Every image shares the base's ssh host keys: a lab, not a site. (Its munge key is
  # replaced by vw with each deployment's own.)
  [ -e "$C/lab_key" ] || ssh-keygen -q -t ed25519 -N '' -C vwlab -f "$C/lab_key"
  install -d -m 0700 "$R/root/.ssh"
  install -m 0600 "$C/lab_key.pub" "$R/root/.ssh/authorized_keys"
  touch "$C/guest-base.done"
}

# A guest tree made from guest-base plus packages.
guest() { # name packages...
  local name=$1; shift
  if [ -e "$C/$name/.vw-packages" ] && [ "$(cat "$C/$name/.vw-packages")" = "$*" ] \
     && [ "$C/$name/.vw-packages" -nt "$C/guest-base.done" ]; then return 0; fi
  log "guest $name: $*"
  rm -rf "$C/$name" "$C/$name.tmp"
  cp -a "$C/guest-base" "$C/$name.tmp"
  chroot_install "$C/$name.tmp" "$@"
  echo "$*" > "$C/$name.tmp/.vw-packages"
  mv "$C/$name.tmp" "$C/$name"
}

image() { # name size
  local name=$1 size=$2 out=$C/images/$1.img
  # Stale when its tree's packages or the guest base's configuration changed.
  [ -e "$out" ] && [ "$out" -nt "$C/$name/.vw-packages" ] && [ "$out" -nt "$C/guest-base.done" ] \
    && return 0
  mkdir -p "$C/images"
  log "image $name ($size)"
  rm -f "$out.tmp"
  mkfs.ext4 -q -F -L vwroot -d "$C/$name" "$out.tmp" "$size"
  mv "$out.tmp" "$out"
}

guests() {
  guest_base
  # The paper's worker: MPI, the batch system's node daemon, an NFS client.
  guest worker nfs-common slurmd slurm-client mpich
  # The head: NFS server, the batch server, MPI with its compiler.
  guest head nfs-kernel-server nfs-common slurmctld slurm-client mpich \
    libmpich-dev gcc libc6-dev
  # A second VO's worker on the same base: a different science stack.
  guest vo2worker nfs-common slurmd slurm-client python3-numpy openmpi-bin
  # The base OS alone: the testnet's cached hosts hold it.
  image guest-base 550M
  image worker 550M
  image head 1100M
  image vo2worker 1400M
}

case "${1:-all}" in
  base) base ;;
  guests) base; guests ;;
  dom0) base; guest_base; dom0 ;;
  all) base; guests; dom0 ;;
  *) log "unknown part ${1}: base, guests, dom0 or all"; exit 2 ;;
esac
log "done: $C"
