"""A Debian 13 (trixie) root prepared for borg-cyrus tests: Debian's own
cyrus-imapd 3.10 and borgbackup 1.4, and a venv with the project.

Two cached tarballs in cleanroom.CACHE, each built once per machine:
  trixie-minbase.tar           debootstrap (cleanroom.build_base("trixie"))
  trixie-borg-cyrus-KEY.tar    + apt-get install cyrus-imapd cyrus-clients
                               borgbackup python3-venv (no service started),
                               VENV with the project's dependencies and its
                               `test` extra from PyPI (borgmatic 2.1, pytest,
                               hypothesis; no borgbackup: Debian's is enough)
KEY hashes what the venv and the packages depend on (pyproject's
requires-python, dependencies, test extra, build requirements; APT_PACKAGES;
RECIPE; the base tarball), so it is rebuilt only when one of them changes;
older prepared tarballs are deleted then.

`with TrixieRoot(project) as root:` unpacks the prepared tarball, copies in
the committed project (`git archive HEAD`), installs it into VENV (no
dependencies, no network) and runs commands with VENV/bin first on PATH:
`root.run(["borg-cyrus", "doctor"], check=False)`, `root.pytest(...)`.
The chroot shares the host's kernel and network namespace: loopback ports
of a Cyrus inside are the host's (the sandbox picks free ones). Leaving the
block kills every process in the root and unmounts and deletes it.
"""

import fcntl
import glob
import hashlib
import json
import os
import re
import time
import tomllib

from support import cleanroom
from support.cleanroom import CHROOT_PATH, PROJECT, CleanRoot, kill_all_in, log, unmount_all

SUITE = "trixie"
# Debian's Cyrus and borg; rsync and btrfs-progs for the rsync-staging and btrfs tests
APT_PACKAGES = ["cyrus-imapd", "cyrus-clients", "borgbackup", "python3-venv", "rsync", "btrfs-progs"]
VENV = "/opt/borg-cyrus"
RECIPE = 1  # bump when build_prepared changes what it installs
MIN_BORG = (1, 4)  # what borg-cyrus needs (doctor.borg_version, slashdot patterns)


def deps_key(project):
    """Hash of what the prepared root's packages and venv depend on."""
    with open(os.path.join(project, "pyproject.toml"), "rb") as f:
        py = tomllib.load(f)
    proj = py.get("project", {})
    base = cleanroom.base_tar(SUITE)
    st = os.stat(base)
    facts = {
        "requires-python": proj.get("requires-python"),
        "dependencies": proj.get("dependencies", []),
        "test": proj.get("optional-dependencies", {}).get("test", []),
        "build": py.get("build-system", {}).get("requires", []),
        "apt": APT_PACKAGES,
        "recipe": RECIPE,
        "base": [st.st_size, st.st_mtime_ns],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


def prepared_tar(key):
    return os.path.join(cleanroom.CACHE, f"{SUITE}-borg-cyrus-{key}.tar")


def borg_version(text):
    """(major, minor) of `borg --version` output ('borg 1.4.0'), or None."""
    m = re.search(r"\bborg(?:\.exe)?\s+(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def build_prepared(project):
    """The prepared tarball for project's dependencies, built if missing."""
    cleanroom.build_base(SUITE)
    key = deps_key(project)
    tarball = prepared_tar(key)
    with open(os.path.join(cleanroom.CACHE, f".{SUITE}-prepare.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(tarball):
            return tarball
        t0 = time.monotonic()
        log(f"preparing {tarball}")
        with CleanRoot(project, suite=SUITE) as root:
            # no service starts inside the chroot while apt installs
            policy = root.path("/usr/sbin/policy-rc.d")
            with open(policy, "w") as f:
                f.write("#!/bin/sh\nexit 101\n")
            os.chmod(policy, 0o755)
            apt_env = {"DEBIAN_FRONTEND": "noninteractive"}
            root.run(["apt-get", "update"], env=apt_env)
            root.run(["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES], env=apt_env, timeout=1200)
            os.unlink(policy)
            out = root.run(["borg", "--version"]).stdout
            if (borg_version(out) or (0, 0)) < MIN_BORG:
                raise RuntimeError(f"Debian {SUITE}'s borg is {out.strip()!r}; borg-cyrus needs >= 1.4")
            pip = f"{VENV}/bin/pip"
            root.run(["python3", "-m", "venv", VENV])
            # setuptools in the venv: each run installs the project with --no-build-isolation, offline
            root.run([pip, "install", "-q", "setuptools>=64", "wheel"], timeout=900)
            root.run([pip, "install", "-q", f"{PROJECT}[test]"], timeout=900)
            root.run([pip, "uninstall", "-y", "-q", "borg-cyrus"])  # each run installs its own tree
            root.run(["apt-get", "clean"])
            root.run(["rm", "-rf", PROJECT, "/root/.cache"])
            kill_all_in(root.root)
            unmount_all(root.root)
            cleanroom.pack(root.root, tarball)
        for old in glob.glob(prepared_tar("*")):
            if old != tarball:
                os.unlink(old)
        log(f"prepared {tarball} in {time.monotonic() - t0:.0f} s")
        return tarball


class TrixieRoot(CleanRoot):
    """`with TrixieRoot(project_dir) as root: root.run([...])` (see the module docstring)."""

    def __init__(self, project):
        super().__init__(project, suite=SUITE)

    def __enter__(self):
        self.tarball = build_prepared(self.project)
        super().__enter__()
        try:
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

    def run(self, argv, *, env=None, **kw):
        """CleanRoot.run with VENV/bin first on PATH (borg-cyrus, borgmatic; borg is Debian's)."""
        return super().run(argv, env={"PATH": f"{VENV}/bin:{CHROOT_PATH}", **(env or {})}, **kw)

    def pytest(self, *args, timeout=1800):
        """pytest of the project inside the root, from its top directory (check=False)."""
        return self.run(
            [f"{VENV}/bin/python", "-m", "pytest", "-p", "no:cacheprovider", *args],
            cwd=PROJECT,
            timeout=timeout,
            check=False,
        )


def run_in_trixie(argv, project, timeout=1800):
    """(exit code, output) of argv run in a fresh prepared root, torn down after."""
    with TrixieRoot(project) as root:
        r = root.run(argv, cwd=PROJECT, timeout=timeout, check=False)
        return r.returncode, r.stdout
