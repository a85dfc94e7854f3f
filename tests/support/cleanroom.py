"""A clean Debian 12 root for install tests.

`debootstrap --variant=minbase bookworm` from the host's own mirror, once,
cached as a tarball in CACHE; every `CleanRoot` unpacks it into a new
directory, mounts /proc /sys /dev /dev/pts /dev/shm /run /tmp, copies in the
committed project and runs commands there with `chroot ... env -i`. Leaving
the `with` block (or a crash of an earlier run, found by the next one) kills
every process whose root is in the directory, unmounts everything under it
and deletes it.

Not a sandbox: the chroot shares the host's kernel, network and /dev.
"""

import configparser
import fcntl
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time

CACHE = os.environ.get("BORG_CYRUS_CLEANROOM_CACHE", "/var/cache/borg-cyrus-tests")
SUITE = "bookworm"
BASE_TAR = os.path.join(CACHE, f"{SUITE}-minbase.tar")
# what a Debian server has besides minbase (https to PyPI needs the CAs)
BASE_PACKAGES = ["ca-certificates"]
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEB822 = "/etc/apt/sources.list.d/debian.sources"
ONE_LINE = "/etc/apt/sources.list"
PROJECT = "/root/borg-cyrus"


def log(msg):
    print(f"cleanroom: {msg}", flush=True)


def run(argv, **kw):
    kw.setdefault("check", True)
    return subprocess.run(argv, **kw)


# ------------------------------------------------------------ host facts


def host_mirror():
    """(URI, keyring or None) of the host's first enabled `deb` source for SUITE."""
    if os.path.exists(DEB822):
        for stanza in open(DEB822).read().split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if line.strip().startswith("#") or ":" not in line:
                    continue
                key, _, val = line.partition(":")
                fields[key.strip().lower()] = val.strip()
            if (
                fields.get("enabled", "yes").lower() != "no"
                and "deb" in fields.get("types", "").split()
                and SUITE in fields.get("suites", "").split()
                and fields.get("uris")
            ):
                return fields["uris"].split()[0], fields.get("signed-by")
    if os.path.exists(ONE_LINE):
        for line in open(ONE_LINE):
            line = line.split("#", 1)[0]
            if "]" in line:  # deb [options] URI SUITE ...
                head, _, rest = line.partition("]")
                line = head.split("[")[0] + rest
            words = line.split()
            if words[:1] == ["deb"] and len(words) >= 3 and words[2] == SUITE:
                return words[1], None
    raise RuntimeError(f"no enabled 'deb {SUITE}' source in {DEB822} or {ONE_LINE}")


def host_apt_access():
    """apt settings the host needs to reach its mirror (proxies, snapshot dates)."""
    r = run(["apt-config", "dump"], capture_output=True, text=True, check=False)
    keep = (
        "Acquire::Check-Valid-Until",
        "Acquire::Check-Date",
        "Acquire::Max-ValidTime",
        "Acquire::http::Proxy",
        "Acquire::https::Proxy",
        "Acquire::ftp::Proxy",
    )
    return [ln for ln in r.stdout.splitlines() if ln.split(" ", 1)[0] in keep]


def host_pip_access():
    """The host's pip settings that say how PyPI is reached (not local paths)."""
    keep = {"index-url", "extra-index-url", "trusted-host", "cert", "proxy", "timeout", "default-timeout"}
    files = [
        "/etc/xdg/pip/pip.conf",
        "/etc/pip.conf",
        os.path.expanduser("~/.pip/pip.conf"),
        os.path.expanduser("~/.config/pip/pip.conf"),
    ]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(os.environ["PIP_CONFIG_FILE"])
    merged = {}
    for path in files:
        cp = configparser.RawConfigParser()
        try:
            cp.read(path)
        except configparser.Error:
            continue
        for key, val in cp.items("global") if cp.has_section("global") else []:
            merged[key.replace("_", "-")] = " ".join(val.split())
    for name, val in os.environ.items():
        if name.startswith("PIP_") and name != "PIP_CONFIG_FILE":
            merged[name[4:].lower().replace("_", "-")] = val
    out = {}
    for key, val in merged.items():
        if key not in keep:
            continue
        if key != "cert":
            val = " ".join(v for v in val.split() if not v.startswith(("file:", "/", ".", "~")))
        if val:
            out[key] = val
    return out


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


# ---------------------------------------------------------------- build


def stale_cleanup():
    """Tear down run directories whose owning process is gone."""
    for owner in glob.glob(os.path.join(CACHE, "*.owner")):
        root = owner[: -len(".owner")]
        try:
            pid = int(open(owner).read())
            os.kill(pid, 0)
            continue
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        log(f"removing {root} left by a dead run")
        teardown(root)


def _new_dir(prefix):
    os.makedirs(CACHE, 0o700, exist_ok=True)
    root = tempfile.mkdtemp(prefix=prefix, dir=CACHE)
    os.chmod(root, 0o755)
    with open(root + ".owner", "w") as f:
        f.write(str(os.getpid()))
    return root


def build_base():
    """BASE_TAR, made once (debootstrap + apt upgrade + BASE_PACKAGES)."""
    os.makedirs(CACHE, 0o700, exist_ok=True)
    with open(os.path.join(CACHE, ".build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(BASE_TAR):
            return BASE_TAR
        if not shutil.which("debootstrap"):
            raise RuntimeError("debootstrap is not installed (./dev setup installs it)")
        stale_cleanup()
        t0 = time.monotonic()
        mirror, keyring = host_mirror()
        stage = _new_dir("stage-")
        logfile = os.path.join(CACHE, "build.log")
        log(f"debootstrap --variant=minbase {SUITE} from {mirror} (log: {logfile})")
        try:
            with open(logfile, "w") as out:
                argv = ["debootstrap", "--variant=minbase"]
                if keyring and os.path.exists(keyring):
                    argv.append(f"--keyring={keyring}")
                run(argv + [SUITE, stage, mirror], stdout=out, stderr=subprocess.STDOUT)
                # apt: the host's own sources (main, updates, security)
                if os.path.exists(DEB822):
                    os.unlink(f"{stage}/etc/apt/sources.list")
                    shutil.copyfile(DEB822, f"{stage}{DEB822}")
                else:
                    shutil.copyfile(ONE_LINE, f"{stage}{ONE_LINE}")
                access = host_apt_access()
                if access:
                    with open(f"{stage}/etc/apt/apt.conf.d/99host-access", "w") as f:
                        f.write("// how the host reaches its mirror\n" + "\n".join(access) + "\n")
                write_host_files(stage)
                mount_api(stage)
                env = {"DEBIAN_FRONTEND": "noninteractive"}
                for argv in (
                    ["apt-get", "update"],
                    ["apt-get", "-y", "dist-upgrade"],
                    ["apt-get", "-y", "--no-install-recommends", "install", *BASE_PACKAGES],
                ):
                    run(chroot_argv(stage, argv, env), stdout=out, stderr=subprocess.STDOUT)
                # CAs the host's admin added (egress proxy, internal mirror)
                local_cas = glob.glob("/usr/local/share/ca-certificates/*")
                for ca in local_cas:
                    shutil.copy(ca, f"{stage}/usr/local/share/ca-certificates/")
                if local_cas:
                    run(chroot_argv(stage, ["update-ca-certificates"]), stdout=out, stderr=subprocess.STDOUT)
                pip = host_pip_access()
                if pip:
                    with open(f"{stage}/etc/pip.conf", "w") as f:
                        f.write(
                            "# how the host reaches PyPI\n[global]\n" + "".join(f"{k} = {v}\n" for k, v in pip.items())
                        )
                run(chroot_argv(stage, ["apt-get", "clean"]), stdout=out, stderr=subprocess.STDOUT)
            kill_all_in(stage)
            unmount_all(stage)
            for path in glob.glob(f"{stage}/var/lib/apt/lists/*"):
                if os.path.isfile(path):
                    os.unlink(path)
            open(f"{stage}/etc/resolv.conf", "w").close()
            run(
                [
                    "tar",
                    "-C",
                    stage,
                    "--numeric-owner",
                    "--xattrs",
                    "--xattrs-include=*",
                    "--one-file-system",
                    "-cpf",
                    BASE_TAR + ".tmp",
                    ".",
                ]
            )
            os.rename(BASE_TAR + ".tmp", BASE_TAR)
        finally:
            teardown(stage)
        log(f"built {BASE_TAR} in {time.monotonic() - t0:.0f} s")
        return BASE_TAR


# ------------------------------------------------------------------ run


def copy_project(src, dest):
    """The committed project (`git archive HEAD`), else the tree without .git/.venv."""
    os.makedirs(dest)
    archive = subprocess.run(["git", "-c", "safe.directory=*", "-C", src, "archive", "HEAD"], capture_output=True)
    if archive.returncode == 0:
        run(["tar", "-x", "-C", dest], input=archive.stdout)
    else:
        shutil.rmtree(dest)
        shutil.copytree(
            src, dest, symlinks=True, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache")
        )


class CleanRoot:
    """`with CleanRoot(project_dir) as root: root.run([...])`."""

    def __init__(self, project=None):
        self.project = project
        self.root = None

    def __enter__(self):
        build_base()
        stale_cleanup()
        self.root = _new_dir("run-")
        try:
            t0 = time.monotonic()
            run(["tar", "-C", self.root, "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", BASE_TAR])
            if self.project:
                copy_project(self.project, self.root + PROJECT)
            write_host_files(self.root)
            mount_api(self.root)
            log(f"root ready in {time.monotonic() - t0:.1f} s: {self.root}")
        except BaseException:
            teardown(self.root)
            raise
        return self

    def __exit__(self, *exc):
        teardown(self.root)
        return False

    def path(self, inside):
        return self.root + "/" + inside.lstrip("/")

    def run(self, argv, *, cwd="/", env=None, timeout=600, prefix=(), check=True, input=None):
        """Run argv in the root (as root, clean environment); prefix runs on the host around chroot."""
        shown = " ".join(argv)
        argv = [*prefix, *chroot_argv(self.root, ["/bin/sh", "-c", 'cd "$0" && exec "$@"', cwd, *argv], env)]
        p = subprocess.Popen(
            argv,
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
            kill_all_in(self.root)  # daemons holding the pipe too
            out, _ = p.communicate()
            raise AssertionError(f"timed out after {timeout} s: {shown}\n{out[-4000:]}")
        r = subprocess.CompletedProcess(argv, p.returncode, out, "")
        if check and p.returncode != 0:
            raise AssertionError(f"exit {p.returncode}: {shown}\n{out[-6000:]}")
        return r
