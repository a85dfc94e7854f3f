#!/bin/bash
# shellcheck disable=SC2054  # commas inside qemu arguments are intended
# run-in-vm.sh -- run a host command as root inside a throwaway QEMU VM that boots
# Debian's stock kernel (device-mapper, LVM, XFS, optionally in-kernel OpenZFS) and
# sees this host's whole userland.
#
#   tests/vm/run-in-vm.sh [OPTIONS] -- COMMAND [ARGS...]
#
#   --disk-size SIZE  size of each scratch disk (default 2G, sparse)
#   --disks N         number of scratch disks, /dev/vda /dev/vdb ... (default 1)
#   --mem MB          guest RAM in MiB (default 2048; the guest's writes live in it)
#   --smp N           vCPUs (default 2)
#   --timeout S       power the VM off after S seconds -> exit 124 (default 1800)
#   --zfs             load OpenZFS in the guest (modules + userland are built and
#                     cached by zfs-modules.sh on first use, ~3 min)
#   --share DIR       host DIR, mounted read-write in the guest at the same path
#                     ($VMH_SHARE); default: a per-run directory that is deleted
#   --quiet           no harness/boot messages (the console log is still shown
#                     when the VM fails)
#   --keep            keep the per-run directory (disk images, console log)
#   --accel A         tcg (default) or kvm
#   --prepare         only install host packages, fetch the kernel, build the
#                     initramfs (and with --zfs the ZFS cache); do not boot
#   -h, --help        this text
#
# In the guest COMMAND runs in the caller's cwd with the caller's environment
# (pyenv shims in PATH are replaced by the interpreter dir they resolve to),
# stdin /dev/null; its stdout/stderr stream to ours. The host's / is mounted
# read-only (9p) under a tmpfs overlay, so the guest may write anywhere; such
# writes vanish at power-off, except under $VMH_SHARE. Guest env: VMH_GUEST=1,
# VMH_DISKS="/dev/vda ...", VMH_SHARE, DM_DISABLE_UDEV=1; LVM is configured for
# a udev-less system (/etc/lvm/lvmlocal.conf).
#
# Exit status: COMMAND's; 124 on timeout; 125 when the harness or VM failed.
# Env: VMH_CACHE (default /var/cache/borg-cyrus-vm), VMH_RUNS (per-run dirs,
#      default $TMPDIR or /tmp), VMH_CPU (TCG -cpu model, default max),
#      VMH_KERNEL_PKG (kernel package; default resolved from linux-image-amd64).
set -Eeuo pipefail
shopt -s nullglob

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DISK_SIZE=2G; NDISKS=1; MEM=2048; SMP=2; TIMEOUT=1800; ACCEL=tcg
ZFS=0; SHARE=""; QUIET=0; KEEP=0; PREPARE=0
CACHE=${VMH_CACHE:-/var/cache/borg-cyrus-vm}

usage() { sed -n '3,/^set -E/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
log() { [ "$QUIET" = 1 ] || echo "[vmh] $*" >&2; }
die() { echo "run-in-vm: $*" >&2; exit 125; }
trap 'die "failed (line $LINENO): $BASH_COMMAND"' ERR

while [ $# -gt 0 ]; do
  case $1 in
    --disk-size) DISK_SIZE=${2:?}; shift 2 ;;
    --disks) NDISKS=${2:?}; shift 2 ;;
    --mem) MEM=${2:?}; shift 2 ;;
    --smp) SMP=${2:?}; shift 2 ;;
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --accel) ACCEL=${2:?}; shift 2 ;;
    --share) SHARE=${2:?}; shift 2 ;;
    --zfs) ZFS=1; shift ;;
    --quiet) QUIET=1; shift ;;
    --keep) KEEP=1; shift ;;
    --prepare) PREPARE=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "run-in-vm: unknown option $1" >&2; usage 125 >&2 ;;
  esac
done
[ $# -gt 0 ] || [ "$PREPARE" = 1 ] || { echo "run-in-vm: no COMMAND" >&2; usage 125 >&2; }
[[ $NDISKS =~ ^[0-9]+$ && $MEM =~ ^[0-9]+$ && $SMP =~ ^[0-9]+$ && $TIMEOUT =~ ^[0-9]+$ ]] \
  || die "--disks, --mem, --smp and --timeout take whole numbers"
[ "$(id -u)" = 0 ] || die "must run as root (qemu exports / over 9p; apt-get)"
[ "${VMH_GUEST:-}" != 1 ] || die "already inside the VM (no nested VMs)"
T0=$(date +%s.%N)
mkdir -p "$CACHE"

# ---------------------------------------------------------------- host packages
apt_install() {
  log "installing host packages: $*"
  local o=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
  DEBIAN_FRONTEND=noninteractive apt-get "${o[@]}" install -y -q --no-install-recommends "$@" >&2 \
    || { apt-get "${o[@]}" update -q >&2 \
         && DEBIAN_FRONTEND=noninteractive apt-get "${o[@]}" install -y -q --no-install-recommends "$@" >&2; } \
    || die "apt-get install $* failed"
}
PKGS=(qemu-system-x86 busybox-static kmod cpio lvm2 xfsprogs xz-utils)
have=$(dpkg-query -W -f='${Package} ${Status}\n' "${PKGS[@]}" 2>/dev/null | awk '/ installed$/ {print $1}' || true)
need=()
for p in "${PKGS[@]}"; do grep -qx "$p" <<<"$have" || need+=("$p"); done
[ ${#need[@]} = 0 ] || apt_install "${need[@]}"

# ---------------------------------------------------------------- kernel (cached)
# Everything below is shared by concurrent runs: prepare it under a lock.
exec 8>"$CACHE/.lock"
flock -w 900 8 || die "timed out waiting for the lock on $CACHE"
KROOT=$CACHE/kernel
if [ ! -f "$KROOT/.complete" ]; then
  PKG=${VMH_KERNEL_PKG:-$(apt-cache depends linux-image-amd64 2>/dev/null \
                          | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')}
  if [ -z "$PKG" ]; then
    apt-get -o Acquire::Retries=3 update -q >&2 || true
    PKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  fi
  [ -n "$PKG" ] || die "cannot resolve the kernel package behind linux-image-amd64"
  log "fetching $PKG into $KROOT"
  DL=$(mktemp -d "$CACHE/.download.XXXXXX")
  (cd "$DL" && apt-get -q -o APT::Sandbox::User=root download "$PKG" >&2) \
    || { apt-get -o Acquire::Retries=3 update -q >&2 \
         && (cd "$DL" && apt-get -q -o APT::Sandbox::User=root download "$PKG" >&2); } \
    || { rm -rf "$DL"; die "apt-get download $PKG failed"; }
  rm -rf "$KROOT"; mkdir -p "$KROOT"
  dpkg -x "$DL"/*.deb "$KROOT"; rm -rf "$DL"
  # the guest never needs these; saves ~200 MB
  KV=$(ls "$KROOT/lib/modules"); MK=$KROOT/lib/modules/$KV/kernel
  rm -rf "$MK"/drivers/{gpu,media,infiniband,net/wireless,net/ethernet,staging,bluetooth,iio,usb,isdn} \
         "$MK"/{sound,net/wireless,net/bluetooth,net/mac80211}
  depmod -b "$KROOT" "$KV"
  touch "$KROOT/.complete"
fi
KVER=$(ls "$KROOT/lib/modules")
[ "$(wc -w <<<"$KVER")" = 1 ] || die "expected one kernel in $KROOT/lib/modules, got: $KVER"
MODDIR=$KROOT/lib/modules/$KVER
KERNEL=$KROOT/boot/vmlinuz-$KVER
# Boot the uncompressed ELF vmlinux through QEMU's PVH entry point (Debian builds
# CONFIG_PVH=y): saves ~2.5 s of decompression + real-mode setup under TCG.
VMLINUX=$CACHE/vmlinux-$KVER
if [ ! -s "$VMLINUX" ]; then
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$KERNEL" | head -1 | cut -d: -f1 || true)
  if [ -n "$off" ] && xz -dcq --single-stream < <(tail -c +$((off + 1)) "$KERNEL" || true) > "$VMLINUX.tmp" 2>/dev/null \
     && [ "$(head -c 4 "$VMLINUX.tmp" | od -An -c | tr -d ' ')" = '177ELF' ]; then
    mv "$VMLINUX.tmp" "$VMLINUX"
  else
    rm -f "$VMLINUX.tmp"; log "could not extract vmlinux; booting the compressed bzImage"
  fi
fi
[ -s "$VMLINUX" ] && KERNEL=$VMLINUX

# ---------------------------------------------------------------- ZFS (cached)
ZROOT=""
if [ "$ZFS" = 1 ]; then
  ZDIR=$CACHE/zfs/$KVER
  if [ ! -f "$ZDIR/.complete" ]; then
    log "no OpenZFS build for $KVER in the cache: running zfs-modules.sh (takes a few minutes)"
    flock -u 8
    VMH_CACHE=$CACHE "$HERE/zfs-modules.sh" "$KVER" >&2 || die "zfs-modules.sh failed"
    flock -w 900 8 || die "timed out waiting for the lock on $CACHE"
  fi
  [ -f "$ZDIR/modules/zfs.ko" ] || die "no zfs.ko in $ZDIR/modules"
  if ! diff -rq "$ZDIR/modules" "$MODDIR/updates/zfs" >/dev/null 2>&1; then
    rm -rf "$MODDIR/updates/zfs"; mkdir -p "$MODDIR/updates"
    cp -r "$ZDIR/modules" "$MODDIR/updates/zfs"
    depmod -b "$KROOT" "$KVER"
  fi
  # The guest stacks this tree as an extra overlay layer over the host's root. A
  # real directory there would hide a host symlink of the same name (/sbin ->
  # usr/sbin on a merged-/usr host), so move such dirs to where the link points.
  ZROOT=$ZDIR/guest-root
  if [ ! -d "$ZROOT" ]; then
    rm -rf "$ZROOT.tmp"; cp -a "$ZDIR/root" "$ZROOT.tmp"
    for d in "$ZROOT.tmp"/*; do
      n=${d##*/}
      if [ -L "/$n" ] && [ -d "$d" ] && [ ! -L "$d" ]; then
        t=$(readlink "/$n"); t=${t#/}
        mkdir -p "$ZROOT.tmp/$t"; cp -a "$d/." "$ZROOT.tmp/$t/"; rm -rf "$d"
      fi
    done
    mv "$ZROOT.tmp" "$ZROOT"
  fi
fi

# ---------------------------------------------------------------- initramfs (cached by content)
# Stage 1 (the initramfs /init): load the drivers the root needs, mount the host's
# / read-only over 9p under a tmpfs overlay (with --zfs the OpenZFS userland is
# one more read-only layer on top), mount the control and share dirs, bind the
# guest kernel's module tree, switch_root. Nothing run-specific is in
# it, so one image serves every run; per-run settings come from the ctl dir.
read -r -d '' STAGE1 <<'EOF' || true
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
Q=0; grep -qw vmh.quiet=1 /proc/cmdline && Q=1
say() { [ "$Q" = 1 ] || echo "[vmh-guest $(cut -d' ' -f1 /proc/uptime)] $*"; }
fail() { echo "[vmh-guest] FATAL: $*"; reboot -f; }
say "kernel $(uname -r) up"
for ko in $(cat /modules/order); do insmod /modules/$ko || fail "insmod $ko"; done
O=trans=virtio,version=9p2000.L,msize=262144
N=/newroot; mkdir -p /ctl /lower /zfs /rw $N
mount -t 9p -o $O vmhctl /ctl || fail "mount ctl (9p)"
mount -t 9p -o $O,cache=loose,ro hostroot /lower || fail "mount host root (9p)"
L=/lower
if [ -f /ctl/zfs ]; then mount -t 9p -o $O,cache=loose,ro vmhzfs /zfs || fail "mount zfs (9p)"; L=/zfs:/lower; fi
mount -t tmpfs -o mode=755 rw /rw; mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=$L,upperdir=/rw/upper,workdir=/rw/work overlay $N || fail "mount overlay"
mkdir -p $N/run; mount -t tmpfs -o mode=755,nosuid,nodev run $N/run
C=$N/run/vmh/ctl; mkdir -p $C $N/run/lock
mount --move /ctl $C || fail "move ctl"
SHARE=$(cat $C/share); mkdir -p "$N$SHARE"
mount -t 9p -o $O vmhshare "$N$SHARE" || fail "mount share (9p)"
M=$N/lib/modules; [ -L $N/lib ] && M=$N/usr/lib/modules
mkdir -p $M/$(uname -r); mount --bind "$N$(cat $C/moddir)" $M/$(uname -r) || fail "bind module tree"
cp /bin/busybox /stage2 $N/run/vmh/
say "root ready"
for d in dev proc sys; do mount --move /$d $N/$d; done
exec switch_root $N /run/vmh/busybox sh /run/vmh/stage2
EOF
# Stage 2: PID 1 in the overlay root. busybox sh prefers its own applets to PATH
# lookups, so host tools are called by full path.
read -r -d '' STAGE2 <<'EOF' || true
BB=/run/vmh/busybox; C=/run/vmh/ctl
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
up() { $BB cut -d' ' -f1 /proc/uptime; }
Q=0; $BB grep -qw vmh.quiet=1 /proc/cmdline && Q=1
say() { [ "$Q" = 1 ] || echo "[vmh-guest $(up)] $*"; }
echo "t_stage2=$(up)" > $C/times
ZPID=; [ -f $C/zfs ] && { /sbin/modprobe zfs & ZPID=$!; }   # ~1 s: overlap it with the rest
$BB mkdir -p /dev/pts /dev/shm /run/lock/lvm /run/lvm /etc/lvm
$BB mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
$BB mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
$BB ln -sfn /proc/self/fd /dev/fd; $BB ln -sf /proc/self/fd/0 /dev/stdin
$BB ln -sf /proc/self/fd/1 /dev/stdout; $BB ln -sf /proc/self/fd/2 /dev/stderr
$BB ip link set lo up
$BB hostname "$($BB cat $C/hostname)"
# device nodes whose first open loads their driver (like systemd's kmod
# static-nodes): /dev/loop-control, /dev/fuse, /dev/btrfs-control ...
while read -r n t ma mi; do
  [ -e /dev/$n ] && continue; case $n in */*) $BB mkdir -p /dev/${n%/*} ;; esac
  $BB mknod /dev/$n $t $ma $mi; done < $C/devnodes
# LVM without udev: lvm creates the /dev nodes itself
$BB cat > /etc/lvm/lvmlocal.conf <<'EOC'
# written by run-in-vm.sh: no udev, no dmeventd, no lvmpolld in this VM
local { }
devices { obtain_device_list_from_udev = 0 use_devicesfile = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
EOC
export DM_DISABLE_UDEV=1
[ -z "$ZPID" ] || wait $ZPID || say "WARNING: modprobe zfs failed"
n=$($BB cat $C/ndisks); i=0
while [ "$($BB ls -d /sys/block/vd* 2>/dev/null | $BB wc -l)" -lt "$n" ] && [ $i -lt 100 ]; do
  $BB sleep 0.05; i=$((i+1)); done
DISKS=; $BB mkdir -p /dev/disk/by-id
for b in /sys/block/vd*; do
  [ -e "$b" ] || continue; d=${b##*/}; DISKS="$DISKS /dev/$d"
  s=$($BB cat $b/serial 2>/dev/null) && [ -n "$s" ] && $BB ln -sf ../../$d /dev/disk/by-id/virtio-$s
done
export VMH_GUEST=1 VMH_DISKS="${DISKS# }" VMH_SHARE="$($BB cat $C/share)"
echo "t_cmd=$(up)" >> $C/times
say "running command (uptime $(up)s)"
/bin/bash $C/cmd.sh </dev/null >>$C/stdout 2>>$C/stderr
rc=$?
echo "t_end=$(up)" >> $C/times
echo $rc > $C/rc
$BB sync
echo 0 > /proc/sys/kernel/printk
$BB reboot -f
EOF
INIT_MODS="virtio_pci virtio_blk 9pnet_virtio 9p overlay dm_mod dm_snapshot"
MODLIST=$(for m in $INIT_MODS; do
            modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
          done | awk '!seen[$0]++')
IHASH=$({ printf '%s\n' "$STAGE1" "$STAGE2" "$MODLIST"; sha1sum /bin/busybox; } | sha1sum | cut -c1-12)
INITRD=$CACHE/initramfs-$KVER-$IHASH.cpio.gz
if [ ! -s "$INITRD" ]; then
  log "building $INITRD"
  R=$(mktemp -d "$CACHE/.initramfs.XXXXXX")
  mkdir -p "$R"/{bin,dev,proc,sys,modules}
  cp /bin/busybox "$R/bin/"
  for ko in $MODLIST; do cp "$ko" "$R/modules/"; basename "$ko"; done > "$R/modules/order"
  printf '%s\n' "$STAGE1" > "$R/init"; printf '%s\n' "$STAGE2" > "$R/stage2"; chmod +x "$R/init"
  (cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"; rm -rf "$R"
  for f in "$CACHE"/initramfs-*.cpio.gz; do [ "$f" = "$INITRD" ] || rm -f "$f"; done
fi
flock -u 8
if [ "$PREPARE" = 1 ]; then
  log "prepared: kernel $KVER, $INITRD${ZROOT:+, OpenZFS $ZROOT}"
  exit 0
fi

# ---------------------------------------------------------------- per-run directory
RUN=$(mktemp -d "${VMH_RUNS:-${TMPDIR:-/tmp}}/vmh-run.XXXXXX")
CTL=$RUN/ctl; mkdir -p "$CTL"
if [ -n "$SHARE" ]; then mkdir -p "$SHARE"; SHARE=$(realpath "$SHARE")
else SHARE=$RUN/share; mkdir -p "$SHARE"; fi
QPID=""; TAILS=()
cleanup() {
  [ -z "$QPID" ] || kill "$QPID" 2>/dev/null || true
  for p in "${TAILS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "$KEEP" = 1 ]; then echo "[vmh] run directory kept: $RUN" >&2; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT; trap 'exit 143' TERM

# Guest PATH: a pyenv shim is a bash script running several pyenv processes
# (~3 s per python start under TCG): put the interpreter dir(s) it resolves to
# for this cwd in place of the shims dirs.
GUEST_PATH=$PATH
if [[ ":$PATH:" == *pyenv*/shims:* ]]; then
  PYENV=$(command -v pyenv || echo "${PYENV_ROOT:-$HOME/.pyenv}/bin/pyenv")
  bins=$("$PYENV" prefix 2>/dev/null | tr ':' '\n' | sed 's|/*$|/bin|' | paste -sd: || true)
  IFS=: read -ra parts <<<"$PATH"; GUEST_PATH=""
  for d in "${parts[@]}"; do
    if [[ $d == *pyenv*/shims ]]; then d=$bins; bins=""; [ -n "$d" ] || continue; fi
    GUEST_PATH+="${GUEST_PATH:+:}$d"
  done
  log "guest PATH: pyenv shims replaced by $("$PYENV" prefix 2>/dev/null || echo nothing)"
fi
# The command script: the caller's environment, cwd and argv, %q-quoted.
{
  echo '# generated by run-in-vm.sh'
  while IFS= read -r -d '' kv; do
    name=${kv%%=*}; val=${kv#*=}
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
    case $name in
      PWD|OLDPWD|SHLVL|_|VMH_GUEST|VMH_DISKS|VMH_SHARE|SSH_*|DISPLAY|WAYLAND_DISPLAY|\
      XDG_RUNTIME_DIR|DBUS_SESSION_BUS_ADDRESS|TMUX|TMUX_PANE|STY|WINDOW|TERMCAP|\
      INVOCATION_ID|JOURNAL_STREAM|NOTIFY_SOCKET|LISTEN_*|MANAGERPID) continue ;;
    esac
    [ "$name" = PATH ] && val=$GUEST_PATH
    printf 'export %s=%q\n' "$name" "$val"
  done < <(env -0)
  printf 'cd -- %q || exit 125\n' "$PWD"
  printf 'exec'; printf ' %q' "$@"; printf '\n'
} > "$CTL/cmd.sh"
hostname > "$CTL/hostname" 2>/dev/null || echo vmh > "$CTL/hostname"
printf '%s\n' "$SHARE" > "$CTL/share"
echo "$MODDIR" > "$CTL/moddir"
echo "$NDISKS" > "$CTL/ndisks"
[ -z "$ZROOT" ] || touch "$CTL/zfs"
awk '!/^#/ && $2 ~ /^(fuse|cuse|loop-control|btrfs-control|mapper\/control|zfs|net\/tun|autofs)$/ {
       split(substr($3, 2), mm, ":"); print $2, substr($3, 1, 1), mm[1], mm[2] }' \
    "$MODDIR/modules.devname" > "$CTL/devnodes"
: > "$CTL/stdout"; : > "$CTL/stderr"; : > "$RUN/console.log"

QEMU=(qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot
  -machine q35 -m "$MEM" -smp "$SMP" -kernel "$KERNEL" -initrd "$INITRD"
  -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap
  -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
  -fsdev "local,id=vmhctl,path=$CTL,security_model=none"
  -device virtio-9p-pci,fsdev=vmhctl,mount_tag=vmhctl
  -fsdev "local,id=vmhshare,path=$SHARE,security_model=none,multidevs=remap"
  -device virtio-9p-pci,fsdev=vmhshare,mount_tag=vmhshare
  -chardev "file,id=con,path=$RUN/console.log" -serial chardev:con)
case $ACCEL in
  tcg) QEMU+=(-accel tcg,thread=multi -cpu "${VMH_CPU:-max}") ;;
  kvm) QEMU+=(-accel kvm -cpu host) ;;
  *) die "--accel: tcg or kvm" ;;
esac
[ -z "$ZROOT" ] || QEMU+=(-fsdev "local,id=vmhzfs,path=$ZROOT,security_model=none,readonly=on"
                         -device virtio-9p-pci,fsdev=vmhzfs,mount_tag=vmhzfs)
for ((i = 0; i < NDISKS; i++)); do
  truncate -s "$DISK_SIZE" "$RUN/disk$i.img"
  QEMU+=(-drive "file=$RUN/disk$i.img,if=none,id=d$i,format=raw,cache=unsafe,discard=unmap"
         -device "virtio-blk-pci,drive=d$i,serial=vmh-disk$i")
done
LOGLEVEL=3; QARG=""; [ "$QUIET" = 1 ] && { LOGLEVEL=1; QARG=vmh.quiet=1; }
QEMU+=(-append "console=ttyS0 panic=-1 loglevel=$LOGLEVEL mitigations=off 8250.nr_uarts=1 i8042.noaux i8042.nokbd i8042.nopnp tsc=reliable no_timer_check $QARG ${VMH_APPEND:-}")

# COMMAND's stdout/stderr are files in the ctl dir (9p writes are synchronous,
# so nothing is lost at power-off); tail streams them, and the console, live.
T1=$(date +%s.%N)
log "booting $KVER ($ACCEL, ${SMP} vCPU, ${MEM} MiB, $NDISKS x $DISK_SIZE disk${ZROOT:+, zfs})"
timeout -k 10 "$TIMEOUT" "${QEMU[@]}" </dev/null >>"$RUN/qemu.log" 2>&1 &
QPID=$!
tail -q -n +1 -s 0.1 --pid="$QPID" -f "$CTL/stdout" & TAILS+=($!)
tail -q -n +1 -s 0.1 --pid="$QPID" -f "$CTL/stderr" >&2 & TAILS+=($!)
[ "$QUIET" = 1 ] || { tail -q -n +1 -s 0.1 --pid="$QPID" -f "$RUN/console.log" >&2 & TAILS+=($!); }
qrc=0; wait "$QPID" || qrc=$?
QPID=""
for p in "${TAILS[@]}"; do wait "$p" 2>/dev/null || true; done; TAILS=()
T2=$(date +%s.%N)

if [ -s "$CTL/rc" ]; then
  rc=$(cat "$CTL/rc")
elif [ "$qrc" = 124 ]; then
  rc=124; echo "run-in-vm: timeout after ${TIMEOUT}s" >&2
else
  rc=125
  echo "run-in-vm: the VM stopped without an exit status (qemu rc $qrc)" >&2
  { cat "$RUN/qemu.log"; [ "$QUIET" = 1 ] && tail -n 40 "$RUN/console.log"; } | sed 's/^/  | /' >&2 || true
fi
if [ "$QUIET" != 1 ] && [ -s "$CTL/times" ]; then
  awk -F= -v t0="$T0" -v t1="$T1" -v t2="$T2" -v rc="$rc" '/^t_[a-z0-9]+=[0-9.]+$/ { t[$1] = $2 }
    END { c = t["t_end"] - t["t_cmd"]
      printf "[vmh] host prep %.2fs, boot to command %.2fs, command %.2fs, VM wall %.2fs (overhead %.2fs), rc=%s\n",
             t1 - t0, t["t_cmd"], c, t2 - t1, t2 - t1 - c, rc }' "$CTL/times" >&2
fi
exit "$rc"
