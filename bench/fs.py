"""Loop-device filesystems, tmpfs, and Cyrus servers whose data lives on them.

Everything created here registers its own teardown in common.CLEANUP, so a
failed or interrupted benchmark leaves no mount, loop device, frozen
filesystem or running Cyrus behind.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

from borg_cyrus.providers import mounts
from borg_cyrus.cyrus.sandbox import Sandbox

from bench import spool
from bench.common import CLEANUP, ROOT, RUN_DIR, SHORT_DIR, log, sh

sys.path.insert(0, os.path.join(ROOT, "tests"))
from support import fsimages as support_fsimages  # noqa: E402  (one LoopFs for tests and benchmarks)
from support.fsimages import mounts_of_source, unmount, unmount_below  # noqa: E402, F401

IMAGES = os.path.join(RUN_DIR, "images")
CACHE = os.path.join(RUN_DIR, "spool-cache")
GENERATOR_VERSION = 3  # bump when spool.py changes what it generates


def mounted_below(path):
    return mounts.mounted_under(path)


def safe_rmtree(path):
    """rmtree that never deletes through a mount: everything mounted below is unmounted first, and if
    anything stays mounted the tree is left alone (borg-cyrus mounts whole btrfs top levels, read-write,
    under its work directory while it runs)."""
    if not os.path.lexists(path):
        return
    unmount_below(path)
    if mounted_below(path):
        log(f"  not removing {path}: still mounted below it: {', '.join(mounted_below(path))}")
        return
    shutil.rmtree(path, ignore_errors=True)


def final_sweep(*roots):
    """Last resort after a failure: nothing mounted, frozen or attached below roots."""
    for root in roots:
        unmount_below(root)
    r = subprocess.run(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and any(parts[1].strip().startswith(root.rstrip("/") + "/") for root in roots):
            unmount(mounts_of_source(parts[0]))
            subprocess.run(["losetup", "-d", parts[0]], capture_output=True)


class LoopFs(support_fsimages.LoopFs):
    """tests/support/fsimages.LoopFs, its teardown registered in CLEANUP."""

    def __init__(self, name, fstype, size, image_dir=IMAGES):
        super().__init__(name, fstype, size, image_dir)

    def make(self, mountpoint):
        CLEANUP.push(self.destroy, what=f"loop fs {self.image}")
        return super().make(mountpoint)


class Tmpfs:
    def __init__(self, path, size="20g"):
        self.path, self.size = path, size

    def __enter__(self):
        os.makedirs(self.path, exist_ok=True)
        unmount_below(self.path)
        sh("mount", "-t", "tmpfs", "-o", f"size={self.size},mode=755", "tmpfs", self.path)
        self._idx = CLEANUP.push(unmount_below, self.path, what=f"tmpfs {self.path}")
        return self

    def __exit__(self, *exc):
        CLEANUP.run_one(self._idx)


def btrfs_subvolume(path):
    sh("btrfs", "subvolume", "create", path)
    os.chmod(path, 0o755)
    return path


class Server:
    """A throwaway Cyrus (borg_cyrus.sandbox.Sandbox) whose data —
    configdirectory, partition-default, sievedir — lives in `data`, on the
    filesystem under test; its config, sockets and pidfile live in `base`."""

    def __init__(self, name, data, base=None):
        self.name = name
        self.data = data
        self.base = base or os.path.join(SHORT_DIR, name)
        self.layout = {
            "configdirectory": f"{data}/conf",
            "partition-default": f"{data}/spool",
            "sievedir": f"{data}/sieve",
        }
        self.sb = Sandbox(self.base, layout=self.layout)
        self.roots = [self.layout["configdirectory"], self.layout["partition-default"], self.layout["sievedir"]]

    def fresh(self):
        """This server's config and directories, around whatever data is already there."""
        self.sb.create()
        CLEANUP.push(self.sb.stop, what=f"stop Cyrus {self.name}")
        return self

    def start(self):
        if not self.sb.running():
            self.sb.start()
        return self

    def stop(self):
        self.sb.stop()

    def service(self):
        return self.sb.borg_cyrus_service()


def _cache_key(scale):
    h = hashlib.sha1(f"{GENERATOR_VERSION}:{scale!r}".encode()).hexdigest()[:10]
    return f"{scale.name}-{h}"


def ensure_cached(scale):
    """Generate the spool into the cache without copying it anywhere (the VM
    reads the cache through its read-only view of the host)."""
    key = _cache_key(scale)
    if not os.path.exists(os.path.join(CACHE, key, ".bench-spool.json")):
        scratch = os.path.join(RUN_DIR, "scratch-" + scale.name)
        build_spool(scale, scratch, use_cache=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return os.path.join(CACHE, key)


def build_spool(scale, dest, use_cache=True, tmpfs_size="20g"):
    """Put the spool of `scale` into directory `dest` (conf/, spool/, sieve/).

    Generated once per (scale, seed, generator version) on tmpfs and kept in
    RUN_DIR/spool-cache, then copied with `cp -a`. Returns the generation info."""
    key = _cache_key(scale)
    cached = os.path.join(CACHE, key)
    info_file = os.path.join(cached, ".bench-spool.json")
    if not (use_cache and os.path.exists(info_file)):
        for old in os.listdir(CACHE) if os.path.isdir(CACHE) else ():  # other versions of this spool
            if old.rsplit("-", 1)[0] == scale.name and old != key:
                shutil.rmtree(os.path.join(CACHE, old), ignore_errors=True)
        p = spool.plan(scale)
        gen = os.path.join(SHORT_DIR, "gen")
        with Tmpfs(gen, tmpfs_size):
            srv = Server("gen-" + scale.name, os.path.join(gen, "data"), base=os.path.join(gen, "cyrus")).fresh()
            t = time.monotonic()
            try:
                srv.start()
                info = spool.populate(srv.sb, p, log=log)
            finally:
                srv.stop()  # before the tmpfs goes: its pidfile lives there
            info.update(
                scale=scale.describe(),
                mailboxes=len(p.mailboxes),
                messages=len(p.messages),
                generate_s=time.monotonic() - t,
                how="lmtp" if scale.lmtp else "fast",
            )
            with open(os.path.join(gen, "data", ".bench-spool.json"), "w") as f:
                json.dump(info, f)
            if use_cache:
                shutil.rmtree(cached, ignore_errors=True)
                os.makedirs(CACHE, exist_ok=True)
                sh("cp", "-a", os.path.join(gen, "data"), cached + ".partial")
                os.rename(cached + ".partial", cached)
            else:
                os.makedirs(dest, exist_ok=True)
                sh("cp", "-a", os.path.join(gen, "data") + "/.", dest)
                return info
    os.makedirs(dest, exist_ok=True)
    t = time.monotonic()
    sh("cp", "-a", cached + "/.", dest)
    with open(info_file) as f:
        info = json.load(f)
    info["copy_s"] = time.monotonic() - t
    return info
