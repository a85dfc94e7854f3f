"""The installed Cyrus kept with the backup (opt-in): the package manifest,
the file list and `cyr_info conf-all` in the dump; with installed.files the
files themselves in the archive; `restore list` shows what is there."""

import os
import re
import subprocess

import pytest

from support.helpers import archive_paths, latest_archive, load_manifest
from support.restore_helpers import backup, restore

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


def _dpkg_version(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True, check=True)
    return r.stdout.strip()


def test_installed_cyrus_recorded_and_archived(populated, base_dir):
    b = backup(populated, base_dir, installed={"record": True, "files": True})
    m = b["manifest"]["installed"]
    pkgs = {p["name"]: p["version"] for p in m["packages"]}
    assert pkgs["cyrus-common"] == _dpkg_version("cyrus-common") and "cyrus-imapd" in pkgs
    assert m["manager"] == "dpkg" and m["files"] > 50 and m["files_archived"]
    paths = archive_paths(b["repo"])
    dump = os.path.join(b["work"], "dump", "installed")
    for p in ("packages.txt", "files.txt", "cyr_info-conf-all.txt"):
        assert f"{dump}/{p}" in paths, p
    assert "/usr/lib/cyrus/bin/master" in paths and "/usr/lib/cyrus/bin/ctl_mboxlist" in paths
    assert not any(p.startswith("/usr/share/doc/") for p in paths)
    conf = open(os.path.join(b["work"], "dump", "installed", "cyr_info-conf-all.txt")).read()
    assert re.search(r"^configdirectory: " + re.escape(populated.confdir) + "$", conf, re.M)
    out = restore(b, "list").stdout
    assert re.search(r"^  installed Cyrus: .*cyrus-common " + re.escape(pkgs["cyrus-common"]), out, re.M), out
    assert "files (archived" in out


def test_installed_record_only_archives_no_binaries(populated, base_dir):
    b = backup(populated, base_dir, installed={"record": True})
    paths = archive_paths(b["repo"], latest_archive(b["repo"]))
    assert "/usr/lib/cyrus/bin/master" not in paths
    assert os.path.join(b["work"], "dump", "installed", "files.txt") in paths
    assert "not archived" in restore(b, "list").stdout
    assert (
        "installed" not in load_manifest(b["work"]) or load_manifest(b["work"])["installed"]["files_archived"] is False
    )
