#!/usr/bin/env bash
# Checks what the Debian package holds and that what it holds works together:
#   scripts/package/check.sh PACKAGE.deb
# Its files (binaries, unit, sysusers entry, examples, docs), the unit's sandbox and
# capability set, the maintainer scripts (group made, unit enabled), and the packaged
# vwd checking the packaged example configs. Unpacks into a temporary directory only:
# nothing is installed on this machine.
set -euo pipefail
DEB=$1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "package check: $*" >&2; exit 1; }

dpkg-deb -x "$DEB" "$WORK/root"
dpkg-deb -e "$DEB" "$WORK/control"
R=$WORK/root

for f in usr/bin/vw usr/bin/vwd; do
  [ -x "$R/$f" ] || fail "$f missing or not executable"
done
for f in usr/lib/systemd/system/vwd.service usr/lib/sysusers.d/vw.conf \
  usr/share/doc/vw/examples/vwd.toml usr/share/doc/vw/examples/cluster.toml \
  usr/share/doc/vw/examples/grid3-cluster.xml usr/share/doc/vw/operations.md \
  usr/share/doc/vw/copyright; do
  [ -f "$R/$f" ] || fail "$f missing"
done
# Nothing outside /usr: configs are the operator's, made from the examples.
extra=$(cd "$R" && find . -mindepth 1 -maxdepth 1 ! -name usr)
[ -z "$extra" ] || fail "files outside /usr: $extra"

grep -qx 'g vw -' "$R/usr/lib/sysusers.d/vw.conf" || fail "sysusers.d does not make group vw"
grep -qx 'nbd' "$R/usr/lib/modules-load.d/vw.conf" || fail "modules-load.d does not load nbd (lazy disks)"
unit=$R/usr/lib/systemd/system/vwd.service
for line in 'ExecStart=/usr/bin/vwd --config /etc/vw/vwd.toml' \
  'ExecStartPre=/usr/bin/vwd --check-config /etc/vw/vwd.toml' \
  'ConditionPathExists=/etc/vw/vwd.toml' 'Type=notify' \
  'CapabilityBoundingSet=CAP_SYS_ADMIN CAP_NET_ADMIN CAP_IPC_LOCK CAP_CHOWN' \
  'NoNewPrivileges=yes' 'ProtectSystem=full' 'ProtectHome=yes' 'PrivateTmp=yes' \
  'UMask=0077' 'StateDirectory=vw' 'StateDirectoryMode=0711'; do
  grep -qxF "$line" "$unit" || fail "vwd.service lacks '$line'"
done
if command -v systemd-analyze > /dev/null; then
  # Verified as this machine would load it, the binaries at their unpacked paths.
  sed "s#/usr/bin/vwd#$R/usr/bin/vwd#g" "$unit" > "$WORK/vwd.service"
  systemd-analyze verify --man=no "$WORK/vwd.service" > "$WORK/verify" 2>&1 ||
    { cat "$WORK/verify" >&2; fail "systemd-analyze verify refuses vwd.service"; }
fi

post=$WORK/control/postinst
grep -q 'systemd-sysusers.*vw.conf' "$post" || fail "postinst does not make the vw group"
grep -q 'deb-systemd-helper enable vwd.service' "$post" || fail "postinst does not enable vwd"
grep -q 'install -d -m 0755 /etc/vw$' "$post" || fail "postinst does not make /etc/vw for the configs"
grep -q 'deb-systemd-helper purge vwd.service' "$WORK/control/postrm" || fail "postrm does not purge vwd"
grep -q '^Depends:.*e2fsprogs' "$WORK/control/control" || fail "Depends lacks e2fsprogs"

# The packaged vwd checks the packaged examples, made concrete the way operations.md
# says: a data directory, a driver named (this machine may not be a dom0), no group.
mkdir -p "$WORK/etc" "$WORK/data"
sed -e 's/^# driver = "xl"/driver = "simulated"/' \
  "$R/usr/share/doc/vw/examples/cluster.toml" > "$WORK/etc/cluster.toml"
grep -q '^driver = "simulated"' "$WORK/etc/cluster.toml" || fail "cluster.toml example has no driver line"
sed -e "s#^data_dir = .*#data_dir = \"$WORK/data\"#" \
  -e "s#^cluster_config = .*#cluster_config = \"$WORK/etc/cluster.toml\"#" \
  -e 's/^socket_group = .*//' \
  "$R/usr/share/doc/vw/examples/vwd.toml" > "$WORK/etc/vwd.toml"
"$R/usr/bin/vwd" --check-config "$WORK/etc/vwd.toml" > "$WORK/check.out" 2>&1 ||
  { cat "$WORK/check.out" >&2; fail "vwd --check-config refuses the packaged example"; }
"$R/usr/bin/vw" --help > /dev/null || fail "vw does not run"
echo "package check: $DEB: files, unit, group, maintainer scripts and examples as they should be"
