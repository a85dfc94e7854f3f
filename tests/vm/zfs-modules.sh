#!/bin/bash
# zfs-modules.sh -- build OpenZFS kernel modules for the VM harness's guest kernel
# and cache them, with the OpenZFS userland, under the harness cache.
#
#   tests/vm/zfs-modules.sh [--force] [KVER]
#
# KVER defaults to the kernel run-in-vm.sh has cached (run `run-in-vm.sh
# --prepare` first; `run-in-vm.sh --zfs` calls this script by itself when the
# cache is missing). Steps, all idempotent and serialised by a lock:
#   1. a private apt configuration (the host's Debian sources with `contrib`
#      added; the system's own apt configuration is not changed) fetches
#      zfs-dkms, zfsutils-linux and the OpenZFS libraries it needs;
#   2. they are unpacked with dpkg -x into $VMH_CACHE/zfs/KVER/root (the guest
#      copies that tree over its root: zpool, zfs, mount.zfs, libzfs ...);
#   3. linux-headers-KVER, gcc and make are installed on the host and the
#      zfs-dkms source is built for KVER (configure ~70 s + make ~80 s on 2
#      cores); the .ko files go to $VMH_CACHE/zfs/KVER/modules.
# Result: $VMH_CACHE/zfs/KVER/{modules/*.ko,root/,.complete}.
# Env: VMH_CACHE (default /var/cache/borg-cyrus-vm).
set -Eeuo pipefail
shopt -s nullglob
die() { echo "zfs-modules: $*" >&2; exit 1; }
trap 'die "failed (line $LINENO): $BASH_COMMAND"' ERR
log() { echo "[zfs-modules] $*" >&2; }

FORCE=0
while [ $# -gt 0 ]; do
  case $1 in
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,/^set -E/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) break ;;
  esac
done
CACHE=${VMH_CACHE:-/var/cache/borg-cyrus-vm}
KVER=${1:-}
if [ -z "$KVER" ]; then
  [ -f "$CACHE/kernel/.complete" ] || die "no kernel in $CACHE; run run-in-vm.sh --prepare first"
  KVER=$(ls "$CACHE/kernel/lib/modules")
fi
[[ $KVER =~ ^[0-9][A-Za-z0-9.+_-]*$ ]] || die "bad kernel version '$KVER'"
Z=$CACHE/zfs; OUT=$Z/$KVER
mkdir -p "$Z"

exec 9>"$Z/.lock"
if ! flock -n 9; then
  log "another build is running; waiting for it"
  flock -w 1800 9 || die "timed out waiting for $Z/.lock"
fi
if [ -f "$OUT/.complete" ] && [ "$FORCE" = 0 ]; then
  log "up to date: $OUT"; exit 0
fi
T0=$(date +%s)
rm -rf "$OUT"; W=$OUT.work; rm -rf "$W"; mkdir -p "$W"

# ---------------------------------------------------------------- 1. private apt with contrib
A=$Z/apt
mkdir -p "$A/lists/partial" "$A/archives/partial" "$A/sources.list.d"
rm -f "$A"/sources.list.d/*
[ ! -f /etc/apt/sources.list ] \
  || sed -E '/^[[:space:]]*deb(-src)?[[:space:]]/ { / contrib([[:space:]]|$)/! s/[[:space:]]*(#.*)?$/ contrib/ }' \
       /etc/apt/sources.list > "$A/sources.list.d/host.list"
for f in /etc/apt/sources.list.d/*.list; do
  sed -E '/^[[:space:]]*deb(-src)?[[:space:]]/ { / contrib([[:space:]]|$)/! s/[[:space:]]*(#.*)?$/ contrib/ }' \
    "$f" > "$A/sources.list.d/${f##*/}"
done
for f in /etc/apt/sources.list.d/*.sources; do
  sed -E '/^Components:/ { / contrib([[:space:]]|$)/! s/[[:space:]]*$/ contrib/ }' "$f" > "$A/sources.list.d/${f##*/}"
done
APT=(-q -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$A/sources.list.d"
     -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
     -o "Dir::Cache::Archives=$A/archives" -o APT::Sandbox::User=root -o Acquire::Retries=3)
log "apt-get update (host sources + contrib, private lists in $A)"
apt-get "${APT[@]}" update >&2
# zfsutils-linux and its OpenZFS libraries (their names carry sonames: ask apt)
PKGS=(zfs-dkms zfsutils-linux)
while read -r p; do PKGS+=("$p"); done < <(
  apt-cache "${APT[@]}" depends --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances zfsutils-linux \
  | awk '$1 ~ /Depends:/ && $2 ~ /^lib(zfs|zpool|nvpair|uutil)/ {print $2}' | sort -u)
# any other library zfsutils-linux needs that the host lacks
while read -r p; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' installed$' || PKGS+=("$p")
done < <(apt-cache "${APT[@]}" depends --no-recommends --no-suggests --no-conflicts --no-breaks \
           --no-replaces --no-enhances zfsutils-linux \
         | awk '$1 == "Depends:" && $2 ~ /^lib/ && $2 !~ /^lib(zfs|zpool|nvpair|uutil)/ {print $2}' | sort -u)
log "downloading ${PKGS[*]}"
mkdir -p "$W/debs"
(cd "$W/debs" && apt-get "${APT[@]}" download "${PKGS[@]}" >&2)
for d in "$W"/debs/*.deb; do dpkg -x "$d" "$W/root"; done
SRC=$(echo "$W"/root/usr/src/zfs-*)
[ -d "$SRC" ] || die "no zfs source in zfs-dkms"
ZVER=${SRC##*/zfs-}

# ---------------------------------------------------------------- 2. build the modules
KCOMMON=/usr/src/linux-headers-${KVER%-*}-common
if [ ! -d "/usr/src/linux-headers-$KVER" ] || [ ! -d "$KCOMMON" ] || ! command -v gcc >/dev/null \
   || ! command -v make >/dev/null; then
  log "installing linux-headers-$KVER gcc make binutils on the host"
  o=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
  DEBIAN_FRONTEND=noninteractive apt-get "${o[@]}" install -y -q --no-install-recommends \
      "linux-headers-$KVER" gcc make binutils >&2 \
    || { apt-get "${o[@]}" update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get "${o[@]}" install \
           -y -q --no-install-recommends "linux-headers-$KVER" gcc make binutils >&2; }
fi
B=$W/build; cp -a "$SRC" "$B"
log "building OpenZFS $ZVER modules for $KVER (~150 s; log in $W/build.log)"
t=$(date +%s)
(cd "$B" && ./configure --with-config=kernel --with-linux="$KCOMMON" --with-linux-obj="/usr/src/linux-headers-$KVER" \
   && make -j"$(nproc)" -C module) > "$W/build.log" 2>&1 \
  || { tail -n 30 "$W/build.log" >&2; die "build failed (see $W/build.log)"; }
log "built in $(( $(date +%s) - t ))s"
mkdir -p "$W/modules"
find "$B/module" -name '*.ko' -exec cp {} "$W/modules/" \;
strip --strip-debug "$W"/modules/*.ko   # 90 MB -> 9 MB: loads much faster in the guest
[ -f "$W/modules/zfs.ko" ] && [ -f "$W/modules/spl.ko" ] || die "no zfs.ko/spl.ko after the build"

# ---------------------------------------------------------------- 3. userland tree for the guest
# Keep what the guest needs: commands, libraries, mount helper, /etc/zfs; drop the
# source, docs, dkms/udev/systemd/initramfs bits.
R=$W/root
(cd "$R" && rm -rf usr/src usr/share lib/udev usr/lib/udev lib/systemd usr/lib/systemd etc/init.d etc/default \
   etc/sudoers.d usr/lib/dracut etc/cron.d etc/modules-load.d lib/modules-load.d usr/lib/modules-load.d)
zpool=""; for z in "$R"/sbin/zpool "$R"/usr/sbin/zpool; do [ -x "$z" ] && zpool=$z; done
[ -n "$zpool" ] || die "no zpool in zfsutils-linux"
missing=$(LD_LIBRARY_PATH=$(find "$R" -name 'libzfs.so*' -printf '%h\n' | head -1) ldd "$zpool" | grep 'not found' || true)
[ -z "$missing" ] || die "zpool lacks libraries: $missing"
mkdir -p "$OUT"; mv "$W/build.log" "$W/modules" "$W/root" "$OUT/"
echo "$ZVER" > "$OUT/version"
rm -rf "$W" "$A/archives"/*.deb
touch "$OUT/.complete"
log "OpenZFS $ZVER for $KVER cached in $OUT ($(( $(date +%s) - T0 ))s)"
