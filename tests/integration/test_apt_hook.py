"""The shipped apt hook (contrib/apt) under a real `apt-get install` in a
clean Debian 13 root with Debian's Cyrus: installing a cyrus-* package
first takes a database-only backup (`borg-cyrus pre-upgrade`); when that
backup fails (a real failure: the repository is not there) apt stops before
dpkg unpacks anything; an unrelated package does not trigger it. The
packages are small ones built here with dpkg-deb; this host's dpkg database
is never touched."""

import json
import os
import subprocess

import pytest

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
    from support.trixieroot import TrixieRoot

    with TrixieRoot(ROOT) as r:
        yield r


def apt_install(root, *debs):
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    return root.run(["apt-get", "install", "-y", *[f"./{d}" for d in debs]], cwd="/root/debs", env=env, check=False)


def installed(root, name):
    r = root.run(["dpkg-query", "-W", "-f", "${Version} ${db:Status-Status}", name], check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def archives(root):
    r = root.run(["borg", "list", "--json", REPO], env={"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"})
    return [a["name"] for a in json.loads(r.stdout)["archives"]]


def test_apt_hook(root):
    debs = root.path("/root/debs")
    os.makedirs(debs)
    cyrus1 = build_deb(debs, "cyrus-dummy", "1")
    cyrus2 = build_deb(debs, "cyrus-dummy", "2")
    extra = build_deb(debs, "cyrus-extra-dummy", "1")
    other = build_deb(debs, "other-dummy", "1")
    with open(root.path("/root/setup.py"), "w") as f:
        f.write(SETUP)
    root.run(["python", "/root/setup.py"], timeout=120)
    root.run(["borgmatic", "-c", HOURLY, "repo-create", "--encryption", "none", "--make-parent-dirs"])
    root.run(["sh", "-c", INSTALL_HOOK])

    # an unrelated package: no backup
    r = apt_install(root, other)
    assert r.returncode == 0, r.stdout
    assert "borg-cyrus" not in r.stdout, r.stdout
    assert installed(root, "other-dummy") == "1 installed"
    assert archives(root) == []

    # a cyrus-* package: the database backup first, then the install
    r = apt_install(root, cyrus1)
    assert r.returncode == 0, r.stdout
    assert "borg-cyrus-pre-upgrade: database backup before cyrus-dummy 1 installed" in r.stdout, r.stdout
    assert "borg-cyrus: pre-upgrade: database backup " in r.stdout, r.stdout
    assert installed(root, "cyrus-dummy") == "1 installed"
    (name,) = archives(root)
    assert "-pre-upgrade-" in name
    listing = root.run(["borg", "list", "--format", "{path}{NL}", f"{REPO}::{name}"]).stdout.split()
    assert f"{BASE.lstrip('/')}/work/dump/manifest.json" in listing, listing[:20]
    info = json.loads(root.run(["borg", "info", "--json", f"{REPO}::{name}"]).stdout)
    assert info["archives"][0]["comment"] == "borg-cyrus pre-upgrade: cyrus-dummy 1 installed"

    # the backup fails for real (the hourly config names a repository that is not
    # there): apt stops before dpkg unpacks anything
    root.run(["sed", "-i", f"s|{REPO}|/var/backups/borg/missing|", HOURLY])
    r = apt_install(root, cyrus2, extra)
    assert r.returncode != 0, r.stdout
    assert "borg-cyrus: error: pre-upgrade: no database backup" in r.stdout, r.stdout
    assert "missing does not exist" in r.stdout, r.stdout
    assert "apt stops before changing cyrus-dummy 1 -> 2, cyrus-extra-dummy 1 installed" in r.stdout, r.stdout
    assert "Unpacking" not in r.stdout, r.stdout
    assert installed(root, "cyrus-dummy") == "1 installed"
    assert installed(root, "cyrus-extra-dummy") is None
    assert len(archives(root)) == 1

    # the documented way past a broken backup
    r = root.run(
        ["apt-get", "install", "-y", f"./{cyrus2}"],
        cwd="/root/debs",
        env={"DEBIAN_FRONTEND": "noninteractive", "BORG_CYRUS_PRE_UPGRADE": "skip"},
        check=False,
    )
    assert r.returncode == 0 and "BORG_CYRUS_PRE_UPGRADE=skip: no database backup" in r.stdout, r.stdout
    assert installed(root, "cyrus-dummy") == "2 installed"
