"""What every snapshot mode shares: find the volumes, quiesce, snapshot them
all in one window, mount the snapshots at stable paths, point-in-time dumps,
teardown from the recorded steps, stale cleanup by name prefix.

A provider (builtin/btrfs.py, lvm.py, zfs.py, command.py) subclasses
SnapshotMode and implements: volume(), create(), mount_snapshot(), remove(),
and optionally health() and stale(). Each snapshot of a volume whose live
root is V is mounted at <mount_directory>/V, so a location P is read at
<mount_directory>/P and archived as P (Borg's /./ slashdot form). The path is
the same on every run: Borg's files cache (keyed on the full path) then
recognises unchanged files and reads only what changed.
"""

import hashlib
import logging
import os
import re
import time

from borg_cyrus import faults
from borg_cyrus.providers import mounts
from borg_cyrus.errors import BorgCyrusError, CommandError
from borg_cyrus.model import View
from borg_cyrus.cyrus.pitconfig import PIT_PREFIX, point_in_time_config, remove_pit_dir
from borg_cyrus.providers.base import Mode
from borg_cyrus.providers.watchdog import Watchdog, own_guard
from borg_cyrus.cyrus.service import Service

log = logging.getLogger(__name__)

MOUNT_OPTIONS = "ro,nosuid,nodev,noexec"

SCHEMA = {
    "snapshot": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": "Settings shared by the snapshot modes (btrfs, lvm, zfs, command) and rsync-staging.",
        "properties": {
            "quiesce": {
                "enum": ["auto", "none", "fsfreeze", "stop-master"],
                "default": "auto",
                "description": "What holds writes while the snapshots are taken. auto: none for providers "
                "whose snapshot is atomic or freezes the filesystem itself (btrfs, zfs, lvm), "
                "fsfreeze for command. stop-master: stop Cyrus only for those seconds.",
            },
            "deadline": {
                "type": "number",
                "exclusiveMinimum": 0,
                "default": 30,
                "description": "Dead-man switch: seconds after which an independent watchdog thaws "
                "the filesystems / starts Cyrus if borg-cyrus died or hangs.",
            },
            "mount_directory": {
                "type": ["string", "null"],
                "pattern": "^/",
                "format": "own-directory",
                "default": None,
                "description": "Stable directory the snapshots are mounted under (default "
                "<work_directory>/snapshots). Keep it fixed: Borg's files cache is keyed on paths.",
            },
            "prefix": {
                "type": "string",
                "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                "default": "borg-cyrus",
                "description": "Name prefix of every snapshot; stale ones with it are removed.",
            },
            "allow_live": {
                "type": "boolean",
                "default": False,
                "description": "Read locations the provider cannot snapshot live (with a warning) instead of failing.",
            },
        },
    }
}


def fsfreeze(runner, mountpoint, freeze):
    argv = ["fsfreeze", "--freeze" if freeze else "--unfreeze", mountpoint]
    r = runner.run(argv, check=False, timeout=60)
    if r.returncode and not (not freeze and "Invalid argument" in r.stderr.decode(errors="replace")):
        raise CommandError(
            f"fsfreeze {'--freeze' if freeze else '--unfreeze'} {mountpoint} failed: "
            f"{r.stderr.decode(errors='replace').strip()}",
            argv,
            r.returncode,
        )


def umount(runner, target):
    if not mounts.is_mountpoint(target):
        return
    r = runner.run(["umount", target], check=False, timeout=120)
    if r.returncode and mounts.is_mountpoint(target):
        time.sleep(0.5)
        runner.run(["umount", target], timeout=120)


def safe_name(path):
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.strip("/")) or "root"
    return name[:100]


class SnapshotMode(Mode):
    """Base of the snapshot providers."""

    provider_freezes = False  # the snapshot call itself quiesces the filesystem
    block_level = False  # snapshots a block device below the page cache (needs a flush)
    default_quiesce = "none"
    needs_mount_options = ()

    # -- provider interface -----------------------------------------------------
    def volume(self, path, mount):
        """(live root of the volume holding path, provider detail dict).
        Raise BorgCyrusError when path is not on such a volume."""
        raise NotImplementedError

    def create(self, vol, name):
        """Take the snapshot (inside the quiesce window); return a JSON-able dict."""
        raise NotImplementedError

    def mount_snapshot(self, vol, snap, target):
        raise NotImplementedError

    def remove(self, snap):
        """Remove the snapshot; must be idempotent."""
        raise NotImplementedError

    def health(self, snap):
        """None if the snapshot is still valid, else why not."""
        return None

    def stale(self):
        """Snapshots carrying our prefix that exist now (dicts remove() accepts)."""
        return []

    # -- shared machinery --------------------------------------------------------
    @property
    def scfg(self):
        return self.ctx.config["snapshot"]

    @property
    def mount_dir(self):
        return self.scfg.get("mount_directory") or os.path.join(self.ctx.work_dir, "snapshots")

    def snapshot_name(self, vol):
        return f"{self.name_prefix}{safe_name(vol['root'])}"

    @property
    def name_prefix(self):
        """`<prefix>-<config id>-`: stale cleanup only ever touches this
        configuration's snapshots, even when several configs share a host."""
        ident = hashlib.sha1(os.path.realpath(self.ctx.work_dir).encode()).hexdigest()[:8]
        return f"{self.scfg['prefix']}-{ident}-"

    def quiesce_mode(self):
        q = self.scfg["quiesce"]
        return self.default_quiesce if q == "auto" else q

    def volumes(self, locations):
        table = mounts.mounts()
        vols = {}
        live = []
        for loc in locations:
            m = mounts.mount_of(loc.path, table)
            try:
                root, detail = self.volume(loc.path, m)
            except BorgCyrusError as e:
                if self.scfg["allow_live"]:
                    log.warning("%s (%s) will be read live: %s", loc.what, loc.path, e)
                    live.append(loc)
                    continue
                raise BorgCyrusError(
                    f"{loc.what} {loc.path}: {e}; put it on a supported volume or set snapshot.allow_live: true"
                ) from None
            vol = vols.setdefault(
                root,
                {
                    "root": root,
                    "mountpoint": m.mountpoint,
                    "fstype": m.fstype,
                    "source": m.source,
                    "detail": detail,
                    "locations": [],
                },
            )
            vol["locations"].append(loc.path)
        return sorted(vols.values(), key=lambda v: (v["root"].count("/"), v["root"])), live

    def freeze(self, locations):
        st = self.ctx.state
        vols, live = self.volumes(locations)
        if not vols:
            raise BorgCyrusError(f"mode {self.name}: no location is on a volume it can snapshot")
        quiesce = self.quiesce_mode()
        prefixes = {p: self.mount_dir for v in vols for p in v["locations"]}
        if self.ctx.dry_run:
            for vol in vols:
                log.info(
                    "dry run: would snapshot %s (%s) as %s and mount it at %s (quiesce %s)",
                    vol["root"],
                    vol["source"],
                    self.snapshot_name(vol),
                    self.mount_dir.rstrip("/") + vol["root"],
                    quiesce,
                )
            return View(
                imapd_conf=self.ctx.layout.imapd_conf,
                layout=self.ctx.layout,
                prefixes=prefixes,
                description=f"{self.name} snapshot (dry run: dumps read live)",
            )
        freeze_mps = []
        if quiesce == "fsfreeze":
            freeze_mps = sorted({v["mountpoint"] for v in vols})
        if freeze_mps:
            wm = mounts.mount_of(self.ctx.work_dir)
            if wm and wm.mountpoint in freeze_mps:
                raise BorgCyrusError(
                    f"work_directory {self.ctx.work_dir} is on {wm.mountpoint}, which is frozen "
                    "while the snapshots are taken; put it on another filesystem"
                )
        svc = Service(self.ctx.config["service"], self.ctx.runner) if quiesce == "stop-master" else None
        stop = svc is not None and svc.is_running()

        t_window = time.monotonic()
        if freeze_mps or stop:
            wd = Watchdog.start(
                self.ctx,
                deadline=self.scfg["deadline"],
                guards=[own_guard()],
                thaw=freeze_mps,
                service=self.ctx.config["service"] if stop else None,
            )
            wd_step = st.push("watchdog", self.name, process=wd)
        t0 = time.monotonic()
        if stop:
            step = st.push("service-stopped", self.name, service=svc.describe())
            svc.stop()
        frozen = []
        for mp in freeze_mps:
            step = st.push("fs-frozen", self.name, mountpoint=mp)
            fsfreeze(self.ctx.runner, mp, True)
            frozen.append(step)
        faults.point("quiesced")
        if self.block_level and not freeze_mps:
            # a block-level copy sees only what reached the disk: flush first
            for mp in sorted({v["mountpoint"] for v in vols}):
                self.ctx.run(["sync", "--file-system", mp], timeout=300)
        snaps = []
        for vol in vols:
            name = self.snapshot_name(vol)
            step = st.push("snapshot", self.name, volume=vol, snapshot={"name": name, "pending": True})
            snap = self.create(vol, name)
            st.update(step, snapshot=snap)
            snaps.append((vol, snap))
            faults.point("snapshotted")
        for step in reversed(frozen):
            fsfreeze(self.ctx.runner, step["mountpoint"], False)
            st.drop(step)
        if stop:
            svc.start()
            st.drop([s for s in st.steps if s["kind"] == "service-stopped"][-1])
        blocked = time.monotonic() - t0
        if freeze_mps or stop:
            Watchdog.stop(wd)
            st.drop(wd_step)
        log.debug("quiesce window %.3f s (including watchdog start %.3f s)", time.monotonic() - t_window, t0 - t_window)

        for vol, snap in snaps:
            target = self.mount_dir.rstrip("/") + vol["root"]
            st.push("mount", self.name, target=target)
            if not self.ctx.dry_run:
                os.makedirs(target, 0o755, exist_ok=True)
            self.mount_snapshot(vol, snap, target)
            faults.point("mounted")
        for vol, snap in snaps:
            problem = self.health(snap)
            if problem:
                raise BorgCyrusError(f"snapshot of {vol['root']} is not usable: {problem}")

        conf, lay = point_in_time_config(self.ctx, self.mount_dir, self.name)
        return View(
            imapd_conf=conf,
            layout=lay,
            prefixes=prefixes,
            blocked_seconds=blocked,
            description=f"{self.name} snapshots of {len(vols)} volume(s), quiesce {quiesce}",
        )

    def undo(self, step):
        kind = step["kind"]
        runner = self.ctx.runner
        if kind == "watchdog":
            Watchdog.stop(step.get("process"))
        elif kind == "fs-frozen":
            fsfreeze(runner, step["mountpoint"], False)
        elif kind == "service-stopped":
            svc = Service(self.ctx.config["service"], runner)
            if not svc.is_running():
                svc.start()
        elif kind == "mount":
            umount(runner, step["target"])
        elif kind == "snapshot":
            snap = step.get("snapshot") or {}
            if snap.get("pending"):
                snap = dict(snap, volume=step.get("volume"))
            self.remove(snap)
        elif kind == "pit-dir":
            remove_pit_dir(self.ctx, step["path"])

    def cleanup_stale(self):
        for name in os.listdir(self.ctx.work_dir) if os.path.isdir(self.ctx.work_dir) else ():
            if name.startswith(PIT_PREFIX):
                remove_pit_dir(self.ctx, os.path.join(self.ctx.work_dir, name))
        base = self.mount_dir
        for mp in mounts.mounted_under(base):
            log.warning("unmounting %s left by an earlier run", mp)
            umount(self.ctx.runner, mp)
        try:
            stale = self.stale()
        except (CommandError, FileNotFoundError) as e:
            log.debug("%s: cannot list stale snapshots: %s", self.name, e)
            return
        for snap in stale:
            log.warning("removing snapshot %s left by an earlier run", snap.get("name"))
            self.remove(snap)

    def check(self, state_data):
        problems = []
        for step in state_data.get("steps", []):
            if step["kind"] == "snapshot" and step.get("mode") == self.name and not step["snapshot"].get("pending"):
                try:
                    p = self.health(step["snapshot"])
                except Exception as e:
                    p = f"cannot check: {e}"
                if p:
                    problems.append(f"snapshot {step['snapshot'].get('name')} of {step['volume']['root']}: {p}")
        return problems
