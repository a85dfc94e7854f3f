"""Testbeds: a Cyrus holding a generated spool on a real filesystem, and
the borg / borgmatic / borg-cyrus configurations the benchmarks compare.

One sparse btrfs loop filesystem per benchmark run holds one subvolume per
spool (`/tmp/bench/btrfs/<scale>`), so every btrfs measurement snapshots a
real subvolume. The XFS testbed (mode `command` + fsfreeze) is an XFS loop
image stored on a second btrfs filesystem, so that a reflink copy of the
image is an instant block-level snapshot — exactly the recipe in README.md.
"""

import json
import os
import re
import shutil
import time

from borg_cyrus.tools.demo import sample_borgmatic_config

from bench import fs
from bench.common import CLEANUP, RUN_DIR, SHORT_DIR, env, log, sh, timed, write_yaml

BTRFS_SIZE = "80G"  # sparse
STORE_SIZE = "40G"
XFS_SIZE = "16G"


class Bench:
    """What a benchmark run shares: options, filesystems, testbeds, results."""

    def __init__(self, quick, reps, use_cache=True, sections=None):
        self.quick = quick
        self.reps = reps
        self.use_cache = use_cache
        self.sections = sections
        self.results = {}
        self._btrfs = None
        self._beds = {}

    def btrfs(self):
        if self._btrfs is None:
            self._btrfs = fs.LoopFs("bench-btrfs", "btrfs", BTRFS_SIZE).make(os.path.join(SHORT_DIR, "btrfs"))
        return self._btrfs

    def testbed(self, scale, kind="btrfs", build=None):
        """build: what puts the spool of scale into a directory (default fs.build_spool)."""
        key = (scale.name, kind)
        if key not in self._beds:
            self._beds[key] = Testbed(self, scale, kind, build=build)
        return self._beds[key]

    def drop_testbed(self, scale, kind="btrfs"):
        """Free the disk space of a testbed no later section needs."""
        bed = self._beds.pop((scale.name, kind), None)
        if bed:
            bed.destroy()


class Testbed:
    def __init__(self, bench, scale, kind="btrfs", source=None, build=None):
        self.bench, self.scale, self.kind = bench, scale, kind
        self.name = scale.name if kind == "btrfs" else f"{scale.name}-{kind}"
        self.dir = os.path.join(RUN_DIR, "beds", self.name)  # configs, repos, work directories
        fs.safe_rmtree(self.dir)
        os.makedirs(self.dir)
        CLEANUP.push(fs.safe_rmtree, self.dir, what=f"remove {self.dir}")  # repositories: GBs
        t = time.monotonic()
        if kind == "btrfs":
            self.fs = bench.btrfs()
            self.data = fs.btrfs_subvolume(os.path.join(self.fs.mountpoint, scale.name))
            self.info = (build or fs.build_spool)(scale, self.data, use_cache=bench.use_cache)
        elif kind == "xfs":
            store = fs.LoopFs(f"bench-store-{scale.name}", "btrfs", STORE_SIZE).make(
                os.path.join(SHORT_DIR, f"store-{scale.name}")
            )
            self.store = store
            self.xfs = fs.LoopFs("xfs", "xfs", XFS_SIZE, image_dir=store.mountpoint).make(
                os.path.join(SHORT_DIR, f"xfs-{scale.name}")
            )
            self.snaps = os.path.join(store.mountpoint, "snaps")
            os.makedirs(self.snaps)
            self.fs = self.xfs
            self.data = os.path.join(self.xfs.mountpoint, "cyrus")
            self.info = fs.build_spool(scale, self.data, use_cache=bench.use_cache)
        elif kind == "lvm":  # inside the VM harness only (device-mapper)
            self.lv = lvm_volume(scale.name)
            self.fs = None
            self.data = os.path.join(self.lv["mountpoint"], "cyrus")
            self.info = fs.build_spool(scale, self.data, use_cache=True)
        else:
            raise ValueError(kind)
        self.setup_s = time.monotonic() - t
        self.server = fs.Server(self.name, self.data).fresh().start()
        c = self.server.sb.imap()
        c.create("user/writer")
        c.logout()
        log(
            f"  testbed {self.name}: {self.info.get('mailboxes')} mailboxes, {self.info.get('messages')} messages, "
            f"{self.info.get('bytes', 0) / 1e6:.0f} MB on {kind} (ready in {self.setup_s:.0f} s)"
        )

    # -- paths ---------------------------------------------------------------
    @property
    def roots(self):
        return self.server.roots

    def repo(self, name, fresh=False):
        path = os.path.join(self.dir, "repos", name)
        if fresh and os.path.exists(path):
            shutil.rmtree(path)
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            sh(
                os.path.join(os.path.dirname(os.sys.executable), "borg"),
                "init",
                "--encryption",
                "none",
                path,
                env=env(),
            )
        return path

    def work(self, name):
        return os.path.join(self.dir, "work", name)

    # -- configurations ---------------------------------------------------------
    def borg_cyrus_config(self, name, work, mode, **extra):
        cfg = {
            "imapd_conf": self.server.sb.imapd_conf,
            "cyrus_conf": self.server.sb.cyrus_conf,
            "work_directory": work,
            "service": self.server.service(),
            "mode": mode,
        }
        if mode == "command":
            cfg["command_snapshot"] = self.command_snapshot()
        # A prefix of our own per work directory: borg-cyrus's stale-snapshot cleanup removes every
        # snapshot with its prefix on every btrfs filesystem of the host, including snapshots another
        # configuration (or another developer's test run on this shared machine) has mounted right now.
        snap = {"prefix": re.sub(r"[^A-Za-z0-9_.-]", "-", f"bench-{self.name}-{os.path.basename(work)}")}
        snap.update(extra.pop("snapshot", {}))
        cfg["snapshot"] = snap
        cfg.update(extra)
        return write_yaml(os.path.join(self.dir, f"borg-cyrus-{name}.yaml"), cfg)

    def command_snapshot(self):
        img = self.xfs.image
        return {
            "create": ["cp", "--reflink=always", img, f"{self.snaps}/{{name}}"],
            "mount": [
                "sh",
                "-c",
                'mount -t xfs -o ro,nosuid,nodev,noexec,nouuid "$(losetup --find --show "$0")" "$1"',
                f"{self.snaps}/{{name}}",
                "{target}",
            ],
            "remove": [
                "sh",
                "-c",
                'for l in $(losetup -j "$0" -O NAME -n); do losetup -d "$l"; done; rm -f "$0"',
                f"{self.snaps}/{{name}}",
            ],
            "list": ["ls", self.snaps],
        }

    def borgmatic_bc(self, name, repo, work, **extra):
        """The shipped sample-borgmatic.yaml, repository and patterns path changed."""
        cfg = sample_borgmatic_config(repo, os.path.join(work, "patterns"))
        cfg.update(extra)
        return write_yaml(os.path.join(self.dir, f"borgmatic-{name}.yaml"), cfg)

    def borgmatic_plain(self, name, repo, **extra):
        """borgmatic without borg-cyrus: the Cyrus directories as source_directories."""
        cfg = {"source_directories": list(self.roots), "repositories": [{"path": repo, "label": name}]}
        cfg.update(extra)
        return write_yaml(os.path.join(self.dir, f"borgmatic-{name}.yaml"), cfg)

    # -- runs -------------------------------------------------------------------
    def borgmatic(self, cfg, bc_config=None, extra_args=(), nice=None):
        e = env({"BORG_CYRUS_CONFIG": bc_config} if bc_config else None)
        pre = ["nice", "-n", str(nice)] if nice else []
        r = timed([*pre, "borgmatic", "-c", cfg, "create", "--verbosity", "1", *extra_args], env_=e, check=False)
        if r.returncode:
            raise RuntimeError(
                f"borgmatic create ({cfg}) failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
            )
        r.hooks = hook_times(r.stdout + r.stderr)
        return r

    def borg_plain(self, repo, label="plain"):
        archive = f"{repo}::{label}-{time.time_ns()}"
        return timed(["borg", "create", archive, *self.roots], env_=env())

    def destroy(self):
        try:
            self.server.stop()
        except Exception as e:
            log(f"  stopping {self.name}: {e}")
        fs.unmount_below(os.path.join(self.dir, "work"))
        if self.kind == "btrfs":
            for sub in sh("btrfs", "subvolume", "list", "-o", self.data, check=False).stdout.splitlines():
                path = sub.split(" path ", 1)[-1]
                sh("btrfs", "subvolume", "delete", os.path.join(self.fs.mountpoint, path), check=False)
            sh("btrfs", "subvolume", "delete", self.data, check=False)
        elif self.kind == "xfs":
            self.xfs.destroy()
            self.store.destroy()
        elif self.kind == "lvm":
            fs.unmount_below(self.lv["mountpoint"])
            sh("lvremove", "-f", f"{VG}/{self.lv['name']}", check=False)
        fs.safe_rmtree(self.dir)


VG = "benchvg"
LV_SIZE = "1200M"


def lvm_volume(name):
    """An XFS logical volume on the VM's scratch disk, mounted (guest only)."""
    if os.environ.get("VMH_GUEST") != "1":
        raise RuntimeError("LVM testbeds run inside the VM harness only")
    disk = os.environ["VMH_DISKS"].split()[0]
    if sh("vgs", VG, check=False).returncode:
        sh("wipefs", "-a", disk)
        sh("pvcreate", "-ff", "-y", disk)
        sh("vgcreate", VG, disk)
    lv = re.sub(r"[^A-Za-z0-9]", "", name) or "cyrus"
    sh("lvcreate", "-y", "-L", LV_SIZE, "-n", lv, VG)
    sh("mkfs.xfs", "-q", "-f", f"/dev/{VG}/{lv}")
    mp = os.path.join(SHORT_DIR, f"lvm-{lv}")
    os.makedirs(mp, exist_ok=True)
    sh("mount", f"/dev/{VG}/{lv}", mp)
    os.chmod(mp, 0o755)
    CLEANUP.push(fs.unmount_below, mp, what=f"unmount {mp}")
    return {"name": lv, "mountpoint": mp}


HOOK_RE = {
    "before_s": re.compile(r"before: ready in ([0-9.]+) s"),
    "after_s": re.compile(r"after: done in ([0-9.]+) s"),
    "blocked_ms": re.compile(r"write-blocked window ([0-9.]+) ms"),
}


def hook_times(text):
    out = {}
    for k, rx in HOOK_RE.items():
        m = rx.findall(text)
        if m:
            out[k] = float(m[-1])
    return out


def manifest(work):
    try:
        with open(os.path.join(work, "dump", "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
