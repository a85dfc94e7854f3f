"""A clean Debian root (12 by default, or 13) for install tests.

`debootstrap --variant=minbase SUITE` from the host's own mirror, once per
suite, cached as a tarball in CACHE; every `CleanRoot` unpacks it (or a
tarball made from it, tests/support/trixieroot.py) into a new directory,
mounts /proc /sys /dev /dev/pts /dev/shm /run /tmp, copies in the committed
project and runs commands there with `chroot ... env -i`. Another suite than
the host's gets the host's apt sources with the suite renamed (bookworm,
bookworm-updates, bookworm-security -> trixie, ...). Leaving the `with` block
(or a crash of an earlier run, found by the next one) kills every process
whose root is in the directory, unmounts everything under it and deletes it
(tests/support/rootfs.py).

Not a sandbox: the chroot shares the host's kernel, network and /dev.
"""

import configparser
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from support.rootfs import (  # noqa: F401 - the harness's names, as before the split
    CHROOT_PATH,
    chroot_argv,
    kill_all_in,
    log,
    mount_api,
    mounts_under,
    pids_in,
    run,
    teardown,
    unmount_all,
    write_host_files,
)

CACHE = os.environ.get("BORG_CYRUS_CLEANROOM_CACHE", "/var/cache/borg-cyrus-tests")
SUITE = "bookworm"  # the default suite of a CleanRoot
# what a Debian server has besides minbase (https to PyPI needs the CAs)
BASE_PACKAGES = ["ca-certificates"]
DEB822 = "/etc/apt/sources.list.d/debian.sources"
ONE_LINE = "/etc/apt/sources.list"
PROJECT = "/root/borg-cyrus"


BASE_RECIPE = 1  # bump when build_base changes what it puts in the root


def base_key(suite=SUITE):
    """Hash of what a base root contains: the suite, the packages, the recipe."""
    facts = {"suite": suite, "packages": BASE_PACKAGES, "recipe": BASE_RECIPE}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


def base_tar(suite=SUITE):
    return os.path.join(CACHE, f"{suite}-minbase-{base_key(suite)}.tar")


# ------------------------------------------------------------ host facts


def host_suite():
    """The host's Debian codename (/etc/os-release), bookworm if it says none."""
    try:
        for line in open("/etc/os-release"):
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"') or SUITE
    except OSError:
        pass
    return SUITE


def host_mirror():
    """(URI, keyring or None) of the host's first enabled `deb` source for its own suite."""
    suite = host_suite()
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
                and suite in fields.get("suites", "").split()
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
            if words[:1] == ["deb"] and len(words) >= 3 and words[2] == suite:
                return words[1], None
    raise RuntimeError(f"no enabled 'deb {suite}' source in {DEB822} or {ONE_LINE}")


def guest_sources(suite):
    """(path, text) of the root's apt sources: the host's own (main, updates,
    security), with the host's suite renamed when the root's is another."""
    path = DEB822 if os.path.exists(DEB822) else ONE_LINE
    text = open(path).read()
    if suite != host_suite():
        # whole words only: bookworm-security -> trixie-security
        text = re.sub(rf"(?<![\w.-]){re.escape(host_suite())}(?=$|[\s-])", suite, text, flags=re.M)
    return path, text


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


def pack(stage, tarball):
    """Tar a stopped, unmounted root (without apt lists and resolv.conf) into tarball."""
    for path in glob.glob(f"{stage}/var/lib/apt/lists/*"):
        if os.path.isfile(path):
            os.unlink(path)
    open(f"{stage}/etc/resolv.conf", "w").close()
    tar = ["tar", "-C", stage, "--numeric-owner", "--xattrs", "--xattrs-include=*", "--one-file-system"]
    run([*tar, "-cpf", tarball + ".tmp", "."])
    os.rename(tarball + ".tmp", tarball)


def unpack(tarball, root):
    run(["tar", "-C", root, "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", tarball])


def host_trust(stage, out):
    """The CAs the host's admin added (egress proxy, internal mirror) and how pip reaches PyPI."""
    os.makedirs(f"{stage}/usr/local/share/ca-certificates", exist_ok=True)
    local_cas = glob.glob("/usr/local/share/ca-certificates/*")
    for ca in local_cas:
        shutil.copy(ca, f"{stage}/usr/local/share/ca-certificates/")
    if local_cas:
        run(chroot_argv(stage, ["update-ca-certificates"]), stdout=out, stderr=subprocess.STDOUT)
    pip = host_pip_access()
    if pip:
        with open(f"{stage}/etc/pip.conf", "w") as f:
            f.write("# how the host reaches PyPI\n[global]\n" + "".join(f"{k} = {v}\n" for k, v in pip.items()))


def build_base(suite=SUITE):
    """base_tar(suite), made once (debootstrap + apt upgrade + BASE_PACKAGES)."""
    tarball = base_tar(suite)
    os.makedirs(CACHE, 0o700, exist_ok=True)
    with open(os.path.join(CACHE, ".build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(tarball):
            return tarball
        if not shutil.which("debootstrap"):
            raise RuntimeError("debootstrap is not installed (./dev setup installs it)")
        stale_cleanup()
        t0 = time.monotonic()
        mirror, keyring = host_mirror()
        stage = _new_dir("stage-")
        logfile = os.path.join(CACHE, f"build-{suite}.log")
        log(f"debootstrap --variant=minbase {suite} from {mirror} (log: {logfile})")
        try:
            with open(logfile, "w") as out:
                argv = ["debootstrap", "--variant=minbase"]
                if keyring and os.path.exists(keyring):
                    argv.append(f"--keyring={keyring}")
                run(argv + [suite, stage, mirror], stdout=out, stderr=subprocess.STDOUT)
                # apt: the host's own sources (main, updates, security), suite renamed
                path, text = guest_sources(suite)
                if path == DEB822:
                    os.unlink(f"{stage}/etc/apt/sources.list")
                with open(f"{stage}{path}", "w") as f:
                    f.write(text)
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
                    ["apt-get", "clean"],
                ):
                    run(chroot_argv(stage, argv, env), stdout=out, stderr=subprocess.STDOUT)
                host_trust(stage, out)
            kill_all_in(stage)
            unmount_all(stage)
            pack(stage, tarball)
        finally:
            teardown(stage)
        for old in glob.glob(os.path.join(CACHE, f"{suite}-minbase*.tar")):
            if old != tarball:  # made by another recipe
                os.unlink(old)
        log(f"built {tarball} in {time.monotonic() - t0:.0f} s")
        return tarball


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

    def __init__(self, project=None, suite=SUITE, tarball=None):
        """suite: a Debian codename (bookworm, trixie); tarball: a root made
        from that suite's base (tests/support/trixieroot.py) instead of it."""
        self.project = project
        self.suite = suite
        self.tarball = tarball
        self.root = None

    def __enter__(self):
        tarball = self.tarball or build_base(self.suite)
        stale_cleanup()
        self.root = _new_dir("run-")
        try:
            t0 = time.monotonic()
            unpack(tarball, self.root)
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
