#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need. Idempotent; CI runs it first.
#   libclang-dev  bindgen for librocksdb-sys (RocksDB is compiled from source)
#   e2fsprogs     mkfs.ext4 for the ext4 test images
#   util-linux    mount/umount (disk-full tests on a tiny tmpfs, loop mounts)
#   xfsprogs      mkfs.xfs (the reflink clone test mounts an XFS image)
#   libxen-dev    Xen's config parser (libxlutil): tests check every generated domain config
#   gcc libc6-dev the C compiler that builds that checker
#   dosfstools    mkfs.vfat for cloud-init seed volumes
#   mtools        mcopy/mtype: writes and reads back seed volume files without mounting
#   iproute2      ip and tc: the testnet's namespaces, bridges and shaped links
#   procps        pgrep: the testnet's teardown test looks for surviving vwds
#   fonts-dejavu-core  the font the testnet's PNG plots are labelled with
#   dpkg-dev systemd   cargo-deb's library dependencies (dpkg-shlibdeps); systemd-analyze
#                 verifies the package's unit (scripts/package)
# With --experiments it also installs what the real-image experiments need:
#   debootstrap   building Debian partition images (../shared/make-images.sh)
#   casync        the baseline the import is compared with
#   aria2 opentracker mktorrent   the testnet's BitTorrent baseline (testnet/src/swarm.rs)
# With --xenlab, what the Xen lab (scripts/xenlab) needs:
#   debootstrap        the dom0 and guest trees
#   qemu-system-x86    Xen hosts as QEMU guests (virtio, 9p, taps)
#   openssh-client     ssh-keygen for the lab's key
set -euo pipefail
pkgs=(libclang-dev clang e2fsprogs util-linux xfsprogs libxen-dev gcc libc6-dev dosfstools mtools
      iproute2 procps fonts-dejavu-core dpkg-dev systemd)
for arg in "$@"; do
  case $arg in
    --experiments) pkgs+=(debootstrap casync aria2 opentracker mktorrent) ;;
    --xenlab) pkgs+=(debootstrap qemu-system-x86 openssh-client) ;;
    *) echo "install-deps.sh: unknown option $arg (--experiments, --xenlab)" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
