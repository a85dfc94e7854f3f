"""Real filesystems on loop devices for the snapshot tests."""

import os
import subprocess

IMAGES = "/var/tmp/bct-images"  # not /tmp: keep images off tmpfs


def sh(*argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout.strip()


class LoopFs:
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
        if self.fstype == "btrfs":
            sh("mkfs.btrfs", "-q", "-f", self.loop)
        elif self.fstype == "xfs":
            sh("mkfs.xfs", "-q", "-f", self.loop)
        else:
            sh("mkfs.ext4", "-q", "-F", self.loop)
        os.makedirs(mountpoint, exist_ok=True)
        sh("mount", self.loop, mountpoint)
        os.chmod(mountpoint, 0o755)
        self.mountpoint = mountpoint
        return self

    def destroy(self):
        if self.mountpoint:
            subprocess.run(["fsfreeze", "--unfreeze", self.mountpoint], capture_output=True)
            subprocess.run(["umount", self.mountpoint], capture_output=True)
        if self.loop:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True)
        if os.path.exists(self.image):
            os.unlink(self.image)


def unmount_below(path):
    """Unmount everything mounted at or below path (deepest first)."""
    from borg_cyrus.providers import mounts

    for mp in mounts.mounted_under(path):
        subprocess.run(["umount", "-l", mp], capture_output=True)


def is_frozen(mountpoint, timeout=1.0):
    """True if a write to mountpoint blocks (probe in a child we do not wait on)."""
    probe = subprocess.Popen(["touch", os.path.join(mountpoint, ".freeze-probe")])
    try:
        probe.wait(timeout)
        return False
    except subprocess.TimeoutExpired:
        return True  # left to finish after the thaw
