"""Real filesystems on loop devices, for the snapshot tests and the benchmarks."""

import os
import subprocess

IMAGES = "/var/tmp/bct-images"  # not /tmp: keep images off tmpfs


def sh(*argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout.strip()


def mounts_of_source(source):
    """Mountpoints of a device, deepest first."""
    from borg_cyrus.providers import mounts

    return sorted({m.mountpoint for m in mounts.mounts() if m.source == source}, key=len, reverse=True)


def unmount(mps):
    for mp in mps:
        subprocess.run(["fsfreeze", "--unfreeze", mp], capture_output=True)
        if subprocess.run(["umount", mp], capture_output=True).returncode:
            subprocess.run(["umount", "-l", mp], capture_output=True)


def unmount_below(path):
    """Unmount everything mounted at or below path (deepest first)."""
    from borg_cyrus.providers import mounts

    unmount(mounts.mounted_under(path))


class LoopFs:
    """A filesystem in an image file on a loop device (btrfs, xfs, ext4);
    the tests and the benchmarks both use it."""

    MKFS = {"btrfs": ["mkfs.btrfs", "-q", "-f"], "xfs": ["mkfs.xfs", "-q", "-f"], "ext4": ["mkfs.ext4", "-q", "-F"]}

    def __init__(self, name, fstype, size="1G", image_dir=IMAGES):
        os.makedirs(image_dir, exist_ok=True)
        self.image = os.path.join(image_dir, f"{name}.img")
        self.fstype = fstype
        self.size = size
        self.loop = None
        self.mountpoint = None

    def make(self, mountpoint):
        if os.path.exists(self.image):
            os.unlink(self.image)
        sh("truncate", "-s", self.size, self.image)
        self.loop = sh("losetup", "--find", "--show", self.image)
        sh(*self.MKFS[self.fstype], self.loop)
        os.makedirs(mountpoint, exist_ok=True)
        sh("mount", self.loop, mountpoint)
        os.chmod(mountpoint, 0o755)
        self.mountpoint = mountpoint
        return self

    def destroy(self):
        """Thaw and unmount wherever it is mounted (also below its mountpoint),
        detach, delete; idempotent."""
        if self.loop:
            unmount(mounts_of_source(self.loop))
        if self.mountpoint:
            unmount_below(self.mountpoint)
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True)
            self.loop = None
        if os.path.exists(self.image):
            os.unlink(self.image)


def is_frozen(mountpoint, timeout=1.0):
    """True if a write to mountpoint blocks (probe in a child we do not wait on)."""
    probe = subprocess.Popen(["touch", os.path.join(mountpoint, ".freeze-probe")])
    try:
        probe.wait(timeout)
        return False
    except subprocess.TimeoutExpired:
        return True  # left to finish after the thaw
