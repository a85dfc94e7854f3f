"""The shipped apt hook (contrib/apt) under a real `apt-get install` in a
clean Debian 13 root with Debian's Cyrus: installing a package of the Cyrus
server first takes a database-only backup (`borg-cyrus pre-upgrade`); when
that backup fails (a real failure: the repository is not there) apt stops
before dpkg unpacks anything; an unrelated package, or a Cyrus one that is
not the server's (cyrus-sasl2-doc, cyrus-doc), does not trigger it. A
repository whose lock another borg really holds, and a borg-cyrus run that
really holds its lock, end apt within the hook's deadline, naming the way
past it. The packages are small ones built here with dpkg-deb (named like
Debian's, versions no Debian package has); this host's dpkg database is
never touched."""

import json
import os
import signal
import subprocess
import time

import pytest
import yaml

from support.common import ROOT

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

SHARE = "/opt/borg-cyrus/share/borg-cyrus"
BASE = "/srv/bct-apt"
HOURLY = "/etc/borg-cyrus/borgmatic-hourly.yaml"
REPO = "/var/backups/borg/cyrus"

# run inside the root with the venv's python: a throwaway Cyrus with a mailbox, the
# borg-cyrus config for it, the shipped hourly sample with a real repository
SETUP = f"""
import os, yaml
from borg_cyrus.cyrus.sandbox import Sandbox
sb = Sandbox("{BASE}/cyrus").create().start()
imap = sb.imap()
assert imap.create("user/alice")[0] == "OK"
imap.logout()
cfg = {{"imapd_conf": sb.imapd_conf, "cyrus_conf": sb.cyrus_conf, "work_directory": "{BASE}/work",
        "service": sb.borg_cyrus_service()}}
with open("/etc/borg-cyrus.yaml", "w") as f:
    yaml.safe_dump(cfg, f)
os.chmod("/etc/borg-cyrus.yaml", 0o600)
with open("{SHARE}/sample-borgmatic-hourly.yaml") as f:
    hourly = yaml.safe_load(f)
hourly["repositories"] = [{{"path": "{REPO}", "label": "local"}}]
hourly["patterns_from"] = ["{BASE}/work/patterns-dumps"]
os.makedirs("/etc/borg-cyrus", 0o700, exist_ok=True)
with open("{HOURLY}", "w") as f:
    yaml.safe_dump(hourly, f)
os.chmod("{HOURLY}", 0o600)
"""

# README "Cyrus package upgrades", from the installed copy
INSTALL_HOOK = (
    f"ln -sf /opt/borg-cyrus/bin/borg-cyrus /opt/borg-cyrus/bin/borg /opt/borg-cyrus/bin/borgmatic /usr/local/bin/"
    f" && install -m 755 {SHARE}/contrib/apt/borg-cyrus-pre-upgrade /usr/local/sbin/"
    f" && install -m 644 {SHARE}/contrib/apt/80borg-cyrus /etc/apt/apt.conf.d/"
)


def build_deb(directory, name, version):
    tree = os.path.join(directory, f"{name}-{version}")
    os.makedirs(os.path.join(tree, "DEBIAN"))
    os.makedirs(os.path.join(tree, "usr/share/doc", name))
    with open(os.path.join(tree, "DEBIAN/control"), "w") as f:
        f.write(
            f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Test <test@example.org>\n"
            f"Section: mail\nPriority: optional\nDescription: test package for the borg-cyrus apt hook\n"
        )
    with open(os.path.join(tree, "usr/share/doc", name, "README"), "w") as f:
        f.write(f"{name} {version}\n")
    deb = os.path.join(directory, f"{name}_{version}_all.deb")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", tree, deb], check=True, capture_output=True)
    return os.path.basename(deb)


@pytest.fixture(scope="module")
def root():
    """The root with Cyrus running, the hourly config and its repository, and the hook installed."""
    from support.trixieroot import TrixieRoot

    with TrixieRoot(ROOT) as r:
        with open(r.path("/root/setup.py"), "w") as f:
            f.write(SETUP)
        r.run(["python", "/root/setup.py"], timeout=120)
        r.run(["borgmatic", "-c", HOURLY, "repo-create", "--encryption", "none", "--make-parent-dirs"])
        r.run(["sh", "-c", INSTALL_HOOK])
        yield r


def debs_dir(root, name):
    d = root.path(f"/root/{name}")
    os.makedirs(d)
    return d


def apt_install(root, *debs, where="/root/debs", env=None, timeout=600):
    env = {"DEBIAN_FRONTEND": "noninteractive", **(env or {})}
    argv = ["apt-get", "install", "-y", *[f"./{d}" for d in debs]]
    return root.run(argv, cwd=where, env=env, check=False, timeout=timeout)


def installed(root, name):
    r = root.run(["dpkg-query", "-W", "-f", "${Version} ${db:Status-Status}", name], check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def absent(root, name):
    """Not installed (dpkg may know the name from apt's lists: not-installed)."""
    return installed(root, name) in (None, "not-installed")


def archives(root):
    r = root.run(["borg", "list", "--json", REPO], env={"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"})
    return [a["name"] for a in json.loads(r.stdout)["archives"]]


def test_apt_hook(root):
    debs = debs_dir(root, "debs")
    cyrus1 = build_deb(debs, "cyrus-nntpd", "1")
    cyrus2 = build_deb(debs, "cyrus-nntpd", "2")
    extra = build_deb(debs, "cyrus-murder", "1")
    other = build_deb(debs, "other-dummy", "1")

    # an unrelated package: no backup
    r = apt_install(root, other)
    assert r.returncode == 0, r.stdout
    assert "borg-cyrus" not in r.stdout, r.stdout
    assert installed(root, "other-dummy") == "1 installed"
    assert archives(root) == []

    # a package of the server: the database backup first, then the install
    r = apt_install(root, cyrus1)
    assert r.returncode == 0, r.stdout
    assert "borg-cyrus-pre-upgrade: database backup before cyrus-nntpd 1 installed" in r.stdout, r.stdout
    assert "borg-cyrus: pre-upgrade: database backup " in r.stdout, r.stdout
    assert installed(root, "cyrus-nntpd") == "1 installed"
    (name,) = archives(root)
    assert "-pre-upgrade-" in name
    listing = root.run(["borg", "list", "--format", "{path}{NL}", f"{REPO}::{name}"]).stdout.split()
    assert f"{BASE.lstrip('/')}/work/dump/manifest.json" in listing, listing[:20]
    info = json.loads(root.run(["borg", "info", "--json", f"{REPO}::{name}"]).stdout)
    assert info["archives"][0]["comment"] == "borg-cyrus pre-upgrade: cyrus-nntpd 1 installed"

    # the backup fails for real (the hourly config names a repository that is not
    # there): apt stops before dpkg unpacks anything
    root.run(["sed", "-i", f"s|{REPO}|/var/backups/borg/missing|", HOURLY])
    r = apt_install(root, cyrus2, extra)
    assert r.returncode != 0, r.stdout
    assert "borg-cyrus: error: pre-upgrade: no database backup" in r.stdout, r.stdout
    assert "missing does not exist" in r.stdout, r.stdout
    assert "apt stops before changing cyrus-murder 1 installed, cyrus-nntpd 1 -> 2" in r.stdout, r.stdout
    assert "Unpacking" not in r.stdout, r.stdout
    assert installed(root, "cyrus-nntpd") == "1 installed"
    assert absent(root, "cyrus-murder")
    assert len(archives(root)) == 1

    # the documented way past a broken backup
    r = root.run(
        ["apt-get", "install", "-y", f"./{cyrus2}"],
        cwd="/root/debs",
        env={"DEBIAN_FRONTEND": "noninteractive", "BORG_CYRUS_PRE_UPGRADE": "skip"},
        check=False,
    )
    assert r.returncode == 0 and "BORG_CYRUS_PRE_UPGRADE=skip: no database backup" in r.stdout, r.stdout
    assert installed(root, "cyrus-nntpd") == "2 installed"


def test_apt_hook_ignores_what_is_not_the_server(root):
    debs = debs_dir(root, "debs-other")
    names = ["cyrus-sasl2-doc", "cyrus-doc", "cyrus-dev"]
    r = apt_install(root, *[build_deb(debs, n, "1") for n in names], where="/root/debs-other")
    assert r.returncode == 0, r.stdout
    assert "borg-cyrus" not in r.stdout, r.stdout
    assert [installed(root, n) for n in names] == ["1 installed"] * 3


HATCH = "BORG_CYRUS_PRE_UPGRADE=skip apt-get"
OFF = "rm /etc/apt/apt.conf.d/80borg-cyrus"


def _background(root, command):
    """Start `command` in the root in a process group of its own; the group's
    id (pids are the same on the host)."""
    r = root.run(["sh", "-c", f"setsid {command} </dev/null >/dev/null 2>&1 & echo $!"])
    return int(r.stdout.strip())


def _stop(pgid):
    """Kill the group: the lock's holder and the `sleep` that inherited it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_apt_hook_ends_in_time_with_a_locked_repository_or_a_busy_run(root):
    """Two real hangs, each ended by the hook's deadline (20 s here, through
    BORG_CYRUS_PRE_UPGRADE_TIMEOUT; 180 by default) instead of the hour apt
    waited before: the repository's lock held by another borg (`borg
    with-lock`) with the config's lock_wait an hour, and borg-cyrus's own lock
    held by a stuck process (a `before` would wait busy.wait, 600 s)."""
    debs = debs_dir(root, "debs-hang")
    repl, pop3 = build_deb(debs, "cyrus-replication", "1"), build_deb(debs, "cyrus-pop3d", "1")
    locked_repo = "/var/backups/borg/locked"
    with open(root.path(SHARE + "/sample-borgmatic-hourly.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg.update(repositories=[{"path": locked_repo, "label": "locked"}], lock_wait=3600)
    cfg["patterns_from"] = [f"{BASE}/work/patterns-dumps"]
    hourly = "/etc/borg-cyrus/borgmatic-locked.yaml"
    with open(root.path(hourly), "w") as f:
        yaml.safe_dump(cfg, f)
    os.chmod(root.path(hourly), 0o600)
    root.run(["borgmatic", "-c", hourly, "repo-create", "--encryption", "none", "--make-parent-dirs"])
    env = {"BORG_CYRUS_PRE_UPGRADE_TIMEOUT": "20", "BORG_CYRUS_PRE_UPGRADE_ARGS": f"--borgmatic-config {hourly}"}
    limit = 20 + 30  # the deadline, and what a busy 2-core machine adds to apt and dpkg

    holder = _background(root, f"borg with-lock {locked_repo} sleep 600")
    try:
        assert wait_for_path(root.path(locked_repo + "/lock.roster"), 30)
        t0 = time.monotonic()
        r = apt_install(root, repl, where="/root/debs-hang", env=env, timeout=120)
        took = time.monotonic() - t0
    finally:
        _stop(holder)
    assert r.returncode != 0 and took < limit, (took, r.stdout)
    assert "Failed to create/acquire the lock" in r.stdout, r.stdout
    assert HATCH in r.stdout and OFF in r.stdout, r.stdout
    assert absent(root, "cyrus-replication")

    lock = f"{BASE}/work/lock"
    root.run(["mkdir", "-p", f"{BASE}/work"])
    holder = _background(root, f"flock {lock} sleep 600")
    try:
        assert wait_for_path(root.path(lock), 30)
        t0 = time.monotonic()
        r = apt_install(root, pop3, where="/root/debs-hang", env=env, timeout=120)
        took = time.monotonic() - t0
    finally:
        _stop(holder)
    assert r.returncode != 0 and took < limit, (took, r.stdout)
    assert f"another borg-cyrus command holds {lock}" in r.stdout and "did not end within 10 s" in r.stdout, r.stdout
    assert HATCH in r.stdout and OFF in r.stdout, r.stdout
    assert absent(root, "cyrus-pop3d")


def wait_for_path(path, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path):
            return True
        time.sleep(0.1)
    return False
