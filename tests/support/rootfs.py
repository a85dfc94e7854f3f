"""Processes, mounts and commands of a chroot on this host (tests/support/cleanroom.py).

A root is a directory; its processes are those whose /proc/PID/root lies in
it, its mounts those at or below it. `teardown` kills, unmounts and deletes,
each step tried even if another fails.
"""

import glob
import os
import shutil
import signal
import subprocess
import time

CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(msg):
    print(f"cleanroom: {msg}", flush=True)


def run(argv, **kw):
    kw.setdefault("check", True)
    return subprocess.run(argv, **kw)


# ------------------------------------------------- processes and mounts


def _unescape(path):
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts_under(root):
    """Mount points at or below root, deepest and most recent first."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for n, line in enumerate(f):
            mp = _unescape(line.split()[4])
            if mp == root or mp.startswith(root + "/"):
                found.append((mp.count("/"), n, mp))
    return [mp for _, _, mp in sorted(found, reverse=True)]


def pids_in(root):
    pids = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            link = os.readlink(d + "/root")
        except OSError:
            continue
        if link == root or link.startswith(root + "/"):
            pids.append(int(d[6:]))
    return pids


def kill_all_in(root):
    for round_ in range(6):
        pids = pids_in(root)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM if round_ == 0 else signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(25):
            time.sleep(0.2)
            if not pids_in(root):
                return
    raise RuntimeError(f"processes still running in {root}: {pids_in(root)}")


def unmount_all(root):
    for _ in range(5):
        for mp in mounts_under(root):
            run(["umount", mp], check=False, stderr=subprocess.DEVNULL)
        if not mounts_under(root):
            return
        time.sleep(0.5)
    for mp in mounts_under(root):
        run(["umount", "-l", mp], check=False)
    if mounts_under(root):
        raise RuntimeError(f"still mounted under {root}: {mounts_under(root)}")


def teardown(root):
    """Kill, unmount, delete; every step is tried even if one fails."""
    errors = []
    for step in (kill_all_in, unmount_all):
        try:
            step(root)
        except Exception as e:  # noqa: BLE001 - collect, go on, report
            errors.append(str(e))
    if not mounts_under(root):
        shutil.rmtree(root, ignore_errors=True)
        try:
            os.unlink(root + ".owner")
        except FileNotFoundError:
            pass
    else:
        errors.append(f"not deleting {root}: still mounted")
    if errors:
        raise RuntimeError("; ".join(errors))


def mount_api(root):
    def mnt(*args):
        run(["mount", *args])

    mnt("-t", "proc", "proc", f"{root}/proc")
    mnt("--rbind", "/sys", f"{root}/sys")
    mnt("--make-rslave", f"{root}/sys")
    for d in ("dev", "dev/pts"):
        mnt("--bind", f"/{d}", f"{root}/{d}")
        mnt("--make-private", f"{root}/{d}")
    mnt("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "shm", f"{root}/dev/shm")
    mnt("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tmpfs", f"{root}/run")
    os.mkdir(f"{root}/run/lock", 0o1777)
    os.chmod(f"{root}/run/lock", 0o1777)
    mnt("-t", "tmpfs", "-o", "mode=1777", "tmpfs", f"{root}/tmp")


def chroot_argv(root, argv, env=None):
    e = {
        "PATH": CHROOT_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "USER": "root",
        "LOGNAME": "root",
        "SHELL": "/bin/bash",
    }
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        if os.environ.get(name):
            e[name] = os.environ[name]
    e.update(env or {})
    return ["chroot", root, "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in e.items()], *argv]


def write_host_files(root):
    os.makedirs(f"{root}/etc", exist_ok=True)
    if os.path.lexists(f"{root}/etc/resolv.conf"):
        os.unlink(f"{root}/etc/resolv.conf")
    shutil.copyfile("/etc/resolv.conf", f"{root}/etc/resolv.conf")
    host = os.uname().nodename
    with open(f"{root}/etc/hostname", "w") as f:
        f.write(host + "\n")
    with open(f"{root}/etc/hosts", "w") as f:
        f.write(f"127.0.0.1\tlocalhost\n127.0.1.1\t{host}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
