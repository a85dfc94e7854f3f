"""Run commands -- typically a pytest file -- inside the QEMU VM harness.

The VM (tests/vm/run-in-vm.sh, see README.md there) boots Debian's stock kernel
under QEMU and sees this host's userland read-only with a tmpfs overlay, so the
project's venv, Cyrus and borg work there unchanged, next to real LVM/XFS and
(with zfs=True) in-kernel OpenZFS on scratch disks /dev/vda, /dev/vdb ...

Host side::

    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "vm"))  # from tests/
    from vmharness import run_in_vm, vm_unavailable_reason

    def test_lvm_snapshots():
        reason = vm_unavailable_reason()
        if reason:
            pytest.skip(reason)
        r = run_in_vm([sys.executable, "-m", "pytest", "-x", "-q", "tests/guest_lvm.py"])
        assert r.returncode == 0, r.stdout + r.stderr

Guest side: the file run in the VM finds its disks in $VMH_DISKS and should
skip itself outside the VM (``@guest_only`` below), since nothing there may
touch the host's disks.
"""

import functools
import os
import platform
import shutil
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_IN_VM = os.path.join(HERE, "run-in-vm.sh")
ROOT = os.path.dirname(os.path.dirname(HERE))  # the repository
HARNESS_FAILURE = 125
TIMEOUT_EXIT = 124


def in_guest():
    """True inside the VM (run-in-vm.sh sets VMH_GUEST=1)."""
    return os.environ.get("VMH_GUEST") == "1"


def _tail(text, lines=15):
    return "\n".join((text or "").strip().splitlines()[-lines:])


@functools.cache
def vm_unavailable_reason():
    """None if the VM can run here, else why not (for pytest.skip).

    The first call prepares the harness (installs qemu & co. with apt-get if
    missing, fetches the kernel, builds the initramfs: ~15 s once per machine)
    and runs qemu once without booting anything.
    """
    if in_guest():
        return "already inside the VM (no nested VMs)"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64", "amd64"):
        return f"the VM harness needs an x86-64 Linux host, not {platform.system()}/{platform.machine()}"
    if os.geteuid() != 0:
        return "the VM harness needs root (apt-get, 9p export of /)"
    if not shutil.which("qemu-system-x86_64") and not shutil.which("apt-get"):
        return "qemu-system-x86_64 is not installed and there is no apt-get to install it"
    try:
        r = subprocess.run(
            [RUN_IN_VM, "--prepare", "--quiet"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1200
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"run-in-vm.sh --prepare failed: {e}"
    if r.returncode:
        return f"run-in-vm.sh --prepare failed (rc {r.returncode}):\n{_tail(r.stderr)}"
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        return "qemu-system-x86_64 still missing after run-in-vm.sh --prepare"
    r = subprocess.run([qemu, "-accel", "help"], capture_output=True, text=True)
    if r.returncode or "tcg" not in r.stdout:
        return f"qemu-system-x86_64 cannot run (TCG unavailable): {_tail(r.stdout + r.stderr)}"
    return None


def vm_available():
    """True if run_in_vm can boot the VM on this machine."""
    return vm_unavailable_reason() is None


def guest_env(env=None):
    """The environment for the guest: `env` (default os.environ) with the bin
    dir of the running venv first in PATH, like an activated venv."""
    env = dict(os.environ if env is None else env)
    if sys.prefix != sys.base_prefix:
        vbin = os.path.join(sys.prefix, "bin")
        path = env.get("PATH", os.defpath)
        if path.split(os.pathsep)[0] != vbin:
            env["PATH"] = vbin + os.pathsep + path
        env.setdefault("VIRTUAL_ENV", sys.prefix)
    return env


def run_in_vm(
    argv,
    *,
    disks=1,
    disk_size="2G",
    zfs=False,
    timeout=1800,
    env=None,
    cwd=None,
    share=None,
    mem=None,
    smp=None,
    quiet=True,
    capture=True,
    extra_args=(),
):
    """Run `argv` as root inside a fresh VM; return a subprocess.CompletedProcess.

    argv runs in `cwd` (default: the repository root) with `env` (default: this
    process's environment, venv bin dir first in PATH). `disks` sparse scratch
    disks of `disk_size` appear as /dev/vda... ($VMH_DISKS); `share` is a host
    dir the guest can write ($VMH_SHARE, same path in the guest; default a
    throwaway dir). returncode is argv's exit status, 124 when `timeout`
    seconds passed, 125 when the harness/VM failed (its stderr tells why).
    With capture=False the output streams to this process's stdout/stderr.
    The VM's writes outside `share` are discarded; the host is not touched.
    """
    cmd = [RUN_IN_VM, "--disks", str(disks), "--disk-size", str(disk_size), "--timeout", str(int(timeout))]
    if zfs:
        cmd.append("--zfs")
    if share is not None:
        cmd += ["--share", os.fspath(share)]
    if mem:
        cmd += ["--mem", str(mem)]
    if smp:
        cmd += ["--smp", str(smp)]
    if quiet:
        cmd.append("--quiet")
    cmd += [*extra_args, "--", *map(os.fspath, argv)]
    out = subprocess.PIPE if capture else None
    # own process group: a pytest timeout/interrupt takes qemu down with the harness
    p = subprocess.Popen(
        cmd,
        cwd=os.fspath(cwd or ROOT),
        env=guest_env(env),
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
        text=True,
        start_new_session=True,
    )
    try:
        # generous: the harness enforces `timeout` itself; a first --zfs run builds OpenZFS (~3 min)
        stdout, stderr = p.communicate(timeout=timeout + (900 if zfs else 120))
    except BaseException:
        _kill_group(p)
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr)


def _kill_group(p):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            pass


def guest_only(obj=None):
    """pytest mark for tests that must only run inside the VM."""
    import pytest

    mark = pytest.mark.skipif(not in_guest(), reason="runs only inside the VM (tests/vm/run-in-vm.sh)")
    return mark if obj is None else mark(obj)
