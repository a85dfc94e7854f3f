"""A Debian root booted with systemd as PID 1 (systemd-nspawn), for tests of
the shipped units under a real service manager (notes: shared/notes/systemd.md).

One cached tarball per suite in cleanroom.CACHE, built once per machine
from the suite's debootstrap base (cleanroom.build_base):
  SUITE-systemd-KEY.tar   + systemd, systemd-sysv, dbus, Debian's cyrus-imapd
                          (its stock unit; pop3, nntp and http commented out
                          of /etc/cyrus.conf, autocreate_post so that LMTP
                          delivery makes the first INBOX), borgbackup 1.4
                          (Debian 12: from bookworm-backports), and VENV with
                          the project's dependencies from PyPI (borgmatic
                          2.1, ...), not the project itself
KEY hashes what that depends on (pyproject's requires-python, dependencies
and build requirements, the package lists, RECIPE, the base tarball), so it
is rebuilt only when one of them changes; older ones of the suite are
deleted then.

`with Machine(project) as m:` mounts an overlay on the tarball's tree
(unpacked once, SUITE-systemd-KEY.d, never written to) in a new directory
under CACHE, copies in the committed project (`git archive HEAD`), boots it
(`systemd-nspawn -b`, isolated network: only lo, so Cyrus's ports are its
own), installs the project into VENV (no network) and waits for
`systemctl is-system-running`. `m.run([...])` runs a command inside
(nsenter into every namespace of the container's init, clean environment);
`m.poweroff()` and `m.boot()` shut it down and boot the same root again.
Leaving the block stops it (SIGKILL of its init if it does not stop) and
deletes the directory; a run that died is cleaned up by the next one
(cleanroom.stale_cleanup).
"""

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib

from support import cleanroom
from support.cleanroom import CHROOT_PATH, PROJECT, CleanRoot, kill_all_in, log, unmount_all

VENV = "/opt/borg-cyrus"
RECIPE = 2  # bump when build_prepared changes what it installs
PACKAGES = ["systemd", "systemd-sysv", "dbus", "cyrus-imapd", "cyrus-clients", "python3-venv", "procps"]
# suite -> (apt source suite borgbackup comes from, or None for the suite's own)
BORG_FROM = {"bookworm": "bookworm-backports", "trixie": None}
MIN_BORG = (1, 4)
PATH = f"{VENV}/bin:{CHROOT_PATH}"
HOST_ID = "BORG_HOST_ID=borg-cyrus-test-machine@1"


def available():
    """None when this host can boot a container, else why not."""
    for prog in ("systemd-nspawn", "nsenter", "debootstrap"):
        if not any(os.access(os.path.join(d, prog), os.X_OK) for d in CHROOT_PATH.split(":")):
            return f"{prog} is not installed (./dev setup installs systemd-container and debootstrap)"
    return None


def deps_key(project, suite):
    with open(os.path.join(project, "pyproject.toml"), "rb") as f:
        py = tomllib.load(f)
    proj = py.get("project", {})
    st = os.stat(cleanroom.base_tar(suite))
    facts = {
        "suite": suite,
        "requires-python": proj.get("requires-python"),
        "dependencies": proj.get("dependencies", []),
        "build": py.get("build-system", {}).get("requires", []),
        "apt": PACKAGES,
        "borg": BORG_FROM[suite],
        "recipe": RECIPE,
        "base": [st.st_size, st.st_mtime_ns],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


def prepared_tar(suite, key):
    return os.path.join(cleanroom.CACHE, f"{suite}-systemd-{key}.tar")


def _backports_source(root, suite_from):
    mirror, keyring = cleanroom.host_mirror()
    with open(root.path("/etc/apt/sources.list.d/backports.sources"), "w") as f:
        f.write(
            f"Types: deb\nURIs: {mirror}\nSuites: {suite_from}\nComponents: main\n"
            f"Signed-By: {keyring or '/usr/share/keyrings/debian-archive-keyring.gpg'}\n"
        )


def build_prepared(project, suite="bookworm"):
    """The prepared tarball of suite for project's dependencies, built if missing."""
    from support.trixieroot import borg_version

    cleanroom.build_base(suite)
    tarball = prepared_tar(suite, deps_key(project, suite))
    with open(os.path.join(cleanroom.CACHE, f".{suite}-systemd.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(tarball):
            return tarball
        t0 = time.monotonic()
        log(f"preparing {tarball}")
        with CleanRoot(project, suite=suite) as root:
            # nothing starts inside the chroot while apt installs
            policy = root.path("/usr/sbin/policy-rc.d")
            with open(policy, "w") as f:
                f.write("#!/bin/sh\nexit 101\n")
            os.chmod(policy, 0o755)
            apt_env = {"DEBIAN_FRONTEND": "noninteractive"}
            apt = ["apt-get", "install", "-y", "--no-install-recommends"]
            if BORG_FROM[suite]:
                _backports_source(root, BORG_FROM[suite])
            root.run(["apt-get", "update"], env=apt_env, timeout=600)
            root.run([*apt, *PACKAGES], env=apt_env, timeout=1200)
            borg_from = ["-t", BORG_FROM[suite]] if BORG_FROM[suite] else []
            root.run([*apt, *borg_from, "borgbackup"], env=apt_env, timeout=1200)
            os.unlink(policy)
            out = root.run(["borg", "--version"]).stdout
            if (borg_version(out) or (0, 0)) < MIN_BORG:
                raise RuntimeError(f"{suite}'s borg is {out.strip()!r}; borg-cyrus needs >= 1.4")
            # an IMAP-only Cyrus as an admin has it (test_readme_install.install_cyrus)
            root.run(["sed", "-i", "-E", r"s/^(\s*)(pop3|nntp|http)(\s)/\1#\2\3/", "/etc/cyrus.conf"])
            with open(root.path("/etc/imapd.conf"), "a") as f:
                f.write("autocreate_post: yes\n")
            if not os.path.lexists(root.path("/etc/systemd/system/multi-user.target.wants/cyrus-imapd.service")):
                raise RuntimeError("Debian's cyrus-imapd did not enable its unit")
            pip = f"{VENV}/bin/pip"
            root.run(["python3", "-m", "venv", VENV])
            # setuptools in the venv (the newest: Debian 12's venv brings 66, older than the
            # project's metadata needs): each run installs the project with --no-build-isolation, offline
            root.run([pip, "install", "-q", "--upgrade", "setuptools", "wheel"], timeout=900)
            root.run([pip, "install", "-q", PROJECT], timeout=900)
            root.run([pip, "uninstall", "-y", "-q", "borg-cyrus"])  # each run installs its own tree
            root.run(["apt-get", "clean"])
            root.run(["rm", "-rf", PROJECT, "/root/.cache"])
            kill_all_in(root.root)
            unmount_all(root.root)
            cleanroom.pack(root.root, tarball)
        for old in glob.glob(prepared_tar(suite, "*")):
            if old != tarball:
                os.unlink(old)
                shutil.rmtree(old[: -len(".tar")] + ".d", ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(old + ".lock")
        log(f"prepared {tarball} in {time.monotonic() - t0:.0f} s")
        return tarball


def _halt_with_parent():
    """nspawn gets SIGTERM (it then halts the container) when the test process dies."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def pristine_tree(tarball):
    """The tarball unpacked once next to it: the read-only lower layer of every
    run's overlay (a run writes only to its own upper layer)."""
    tree = tarball[: -len(".tar")] + ".d"
    with open(tarball + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isdir(tree):
            t0 = time.monotonic()
            shutil.rmtree(tree + ".tmp", ignore_errors=True)
            os.mkdir(tree + ".tmp", 0o755)
            cleanroom.unpack(tarball, tree + ".tmp")
            os.rename(tree + ".tmp", tree)
            log(f"unpacked {tarball} in {time.monotonic() - t0:.0f} s")
    return tree


class Machine:
    """A booted container (see the module docstring)."""

    def __init__(self, project, suite="bookworm"):
        self.project = project
        self.suite = suite
        self.dir = self.root = None
        self.nspawn = None
        self.init_pid = None
        self.boots = 0

    # -- life cycle -----------------------------------------------------------
    def __enter__(self):
        tree = pristine_tree(build_prepared(self.project, self.suite))
        cleanroom.stale_cleanup()
        self.dir = cleanroom._new_dir("nspawn-")
        try:
            t0 = time.monotonic()
            self.root = os.path.join(self.dir, "root")
            for d in ("root", "upper", "work"):
                os.mkdir(os.path.join(self.dir, d), 0o755)
            opts = f"lowerdir={tree},upperdir={self.dir}/upper,workdir={self.dir}/work"
            cleanroom.run(["mount", "-t", "overlay", "overlay", "-o", opts, self.root])
            cleanroom.copy_project(self.project, self.path(PROJECT))
            cleanroom.write_host_files(self.root)
            self.hostname = "bct-" + os.path.basename(self.dir).split("-", 1)[1].lower().replace("_", "")
            with open(self.path("/etc/hostname"), "w") as f:
                f.write(self.hostname + "\n")
            # borg knows its own stale lock (a killed borg's) by host id, hostname + MAC; the
            # container has no NIC, so each borg would get a random one: the stable id a host has
            self.write("/etc/systemd/system.conf.d/90-borg-host-id.conf", f"[Manager]\nDefaultEnvironment={HOST_ID}\n")
            log(f"root ready in {time.monotonic() - t0:.1f} s: {self.root}")
            self.boot()
            t0 = time.monotonic()
            self.run(
                [f"{VENV}/bin/pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", PROJECT],
                timeout=300,
            )
            log(f"project installed in {VENV} in {time.monotonic() - t0:.1f} s")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        try:
            if self.nspawn is not None and self.nspawn.poll() is None:
                try:
                    self.poweroff(timeout=30)
                except AssertionError:
                    self.kill()
        finally:
            cleanroom.teardown(self.dir)
        return False

    def path(self, inside):
        return self.root + "/" + inside.lstrip("/")

    def boot(self, timeout=120):
        """Boot the root (systemd as PID 1) and wait until it runs."""
        assert self.nspawn is None or self.nspawn.poll() is not None, "already booted"
        self.boots += 1
        self.console = self.path(f"/nspawn-console-{self.boots}.log")
        argv = [
            "systemd-nspawn",
            "--quiet",
            f"--directory={self.root}",
            f"--machine={self.hostname}",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
            "--console=pipe",
            "--private-network",
        ]
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        t0 = time.monotonic()
        with open(self.console, "w") as out:
            self.nspawn = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_halt_with_parent,
            )
        end = t0 + timeout
        while time.monotonic() < end:
            if self.nspawn.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited {self.nspawn.returncode}:\n{self.console_text()}")
            pid = self._init(self.nspawn.pid)
            if pid:
                self.init_pid = pid
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"no init in the container after {timeout} s:\n{self.console_text()}")
        while time.monotonic() < end:
            r = self.run(["systemctl", "is-system-running"], check=False, timeout=30)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(
                f"the container did not finish booting in {timeout} s ({state}):\n{self.console_text()}"
            )
        log(f"booted {self.suite} in {time.monotonic() - t0:.1f} s ({state})")
        if state == "degraded":
            log(self.run(["systemctl", "--failed", "--no-legend"], check=False).stdout)
        return self

    @staticmethod
    def _init(pid):
        """The container's systemd: nspawn's child, PID 1 of its own namespace."""
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kid = int(f.read().split()[0])
            with open(f"/proc/{kid}/status") as f:
                status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except (OSError, ValueError, IndexError):
            return None
        ok = status.get("Name", "").strip() == "systemd" and status.get("NSpid", "").split()[-1:] == ["1"]
        return kid if ok else None

    def console_text(self):
        try:
            with open(self.console, errors="replace") as f:
                return f.read()[-6000:]
        except OSError:
            return ""

    def poweroff(self, timeout=60):
        """`systemctl poweroff` inside; returns the seconds until the container was gone."""
        t0 = time.monotonic()
        self.run(["systemctl", "poweroff"], check=False, timeout=30)
        return self.wait_down(t0, timeout)

    def wait_down(self, t0, timeout):
        try:
            self.nspawn.wait(timeout=max(0, t0 + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the container did not stop within {timeout} s:\n{self.console_text()}")
        self.init_pid = None
        return time.monotonic() - t0

    def kill(self):
        """SIGKILL the container's init (and so all in it) and nspawn."""
        init = self.init_pid
        if init is None and self.nspawn is not None:
            try:
                with open(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children") as f:
                    init = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        for pid in (init, self.nspawn.pid if self.nspawn else None):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.nspawn is not None:
            try:
                self.nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        kill_all_in(self.root)
        self.init_pid = None

    # -- inside ---------------------------------------------------------------
    def run(self, argv, *, env=None, timeout=300, check=True, input=None):
        """argv inside the container (root, clean environment, VENV/bin first
        on PATH). Not in any of its units: a client, like an admin's shell."""
        assert self.init_pid, "the container is not running"
        e = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb", "USER": "root", "LOGNAME": "root"}
        e.update(dict([HOST_ID.split("=", 1)]))
        e.update(env or {})
        full = ["nsenter", "-t", str(self.init_pid), "-a", "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in e.items()]]
        full += list(argv)
        p = subprocess.Popen(
            full,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
            raise AssertionError(f"timed out after {timeout} s: {' '.join(argv)}\n{out[-4000:]}")
        r = subprocess.CompletedProcess(argv, p.returncode, out, "")
        if check and p.returncode != 0:
            raise AssertionError(f"exit {p.returncode}: {' '.join(argv)}\n{out[-6000:]}")
        return r

    def sh(self, script, **kw):
        return self.run(["/bin/sh", "-ec", script], **kw)

    def python(self, code, *args, **kw):
        """Debian's python3 inside, running code."""
        return self.run(["/usr/bin/python3", "-c", code, *args], **kw)

    def write(self, inside, text, mode=0o644):
        """A file inside, written from the host (the root's own directory)."""
        path = self.path(inside)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
