"""Every archive is untrusted input to a restore (anyone holding the key can
write one). Archives are forged for real: a real backup's dump is changed and
archived again with borg, together with files at the paths the forged entries
point to. A restore must refuse a forged entry with one line naming it and
change nothing; files that are not plain data never reach the spool."""

import json
import os
import stat
import subprocess

import pytest

from borg_cyrus.cyrus import storage
from borg_cyrus.cyrus.layout import discover
from support.common import BASE, env
from support.helpers import latest_archive, snapshot
from support.restore_helpers import _boxes_by_name, backup, delete_user, restore

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One real backup of the demo server, shared by the tests of this module."""
    import shutil
    from borg_cyrus.tools.demo import populate
    from borg_cyrus.cyrus.sandbox import Sandbox

    base = os.path.join(BASE, "forged")
    if os.path.exists(base):
        for sub in os.listdir(base):
            Sandbox(os.path.join(base, sub)).stop()
        shutil.rmtree(base)
    os.makedirs(base, 0o755)
    sb = Sandbox(os.path.join(base, "cyrus"), partitions=("default", "second")).create().start()
    populate(sb)
    b = backup(sb, base)
    b["sb"], b["base"], b["archive"] = sb, base, latest_archive(b["repo"])
    yield b
    sb.stop()
    shutil.rmtree(base, ignore_errors=True)


def forge(b, name, change, extra_files=()):
    """Archive `name`: everything of the real backup, with change(manifest,
    mailboxes.json lines) applied to its dump, plus extra_files [(absolute
    path, bytes | (symlink target,) | None for a FIFO, mode)]."""
    root = os.path.join(b["base"], f"forge-{name}")
    subprocess.run(["rm", "-rf", root], check=True)
    os.makedirs(root)
    subprocess.run(
        ["borg", "extract", f"{b['repo']}::{b['archive']}"], cwd=root, env=env(), check=True, capture_output=True
    )
    dump = b["work"] + "/dump"
    mpath, jpath = root + dump + "/manifest.json", root + dump + "/mailboxes.json"
    manifest = json.load(open(mpath))
    lines = open(jpath).read().splitlines()
    change(manifest, lines)
    json.dump(manifest, open(mpath, "w"))
    open(jpath, "w").write("\n".join(lines) + "\n")
    for path, data, mode in extra_files:
        os.makedirs(os.path.dirname(root + path), exist_ok=True)
        if data is None:
            os.mkfifo(root + path)
        elif isinstance(data, tuple):
            os.symlink(data[0], root + path)
        else:
            with open(root + path, "wb") as f:
                f.write(data)
            os.chmod(root + path, mode)
    subprocess.run(
        ["borg", "create", f"{b['repo']}::{name}", *sorted(os.listdir(root))],
        cwd=root,
        env=env(),
        check=True,
        capture_output=True,
    )
    subprocess.run(["rm", "-rf", root], check=True)
    return name


def set_entry(name, **fields):
    def change(manifest, lines):
        for i, ln in enumerate(lines):
            if ln.strip().startswith(json.dumps(name) + ":"):
                key, _, rest = ln.strip().partition(": ")
                comma = rest.endswith(",")
                entry = json.loads(rest.rstrip(","))
                entry.update(fields)
                lines[i] = f"{key}: {json.dumps(entry)}" + ("," if comma else "")
                return
        raise AssertionError(f"{name} not in the dump")

    return change


def one_error(r):
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("borg-cyrus: error:")]
    assert r.returncode != 0 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    return errors[0]


def server_state(sb):
    return sorted(_boxes_by_name(sb)), sorted(os.listdir(sb.partitions["default"]))


@pytest.mark.parametrize("uniqueid", ["{base}/forged/outside/abs", "../../../outside/dotdot", "a/b/c", "x\ny"])
def test_forged_uniqueid_refused(world, uniqueid):
    b, sb = world, world["sb"]
    uniqueid = uniqueid.format(base=BASE)  # the run's own directory (the same test id in every xdist worker)
    outside = os.path.join(b["base"], "outside")
    planted = uniqueid if uniqueid.startswith("/") else os.path.join(outside, "planted")
    name = forge(
        b,
        f"uid-{abs(hash(uniqueid))}",
        set_entry("user.bob.Archive 2019", uniqueid=uniqueid),
        [(planted + "/cyrus.header", b"x\n", 0o644)],
    )
    before = server_state(sb)
    delete_user(sb, "bob")
    try:
        r = restore(b, "user", "bob", "--archive", name, check=None)
        line = one_error(r)
        assert "user.bob.Archive 2019" in line and "uniqueid" in line and "nothing was changed" in line
        assert not os.path.exists(outside)
        assert "user.bob" not in _boxes_by_name(sb)
    finally:
        restore(b, "user", "bob", "--archive", b["archive"])
    assert server_state(sb) == before


def test_forged_partition_and_name_refused(world):
    b, sb = world, world["sb"]
    r = restore(
        b, "user", "bob", "--archive", forge(b, "part", set_entry("user.bob", partition="../../etc")), check=None
    )
    assert "partition '../../etc'" in one_error(r)
    # a partition the archived layout does not define
    r = restore(
        b,
        "mailbox",
        "user/bob/Archive 2019",
        "--into",
        "user/bob/Again",
        "--archive",
        forge(b, "part2", set_entry("user.bob.Archive 2019", partition="nosuch")),
        check=None,
    )
    assert "partition 'nosuch'" in one_error(r)
    assert "user.bob.Again" not in _boxes_by_name(sb)
    r = restore(
        b,
        "user",
        "eve",
        "--archive",
        forge(
            b,
            "dotdot",
            lambda m, lines: lines.insert(
                # a '/' inside a component: the legacy path and the name given to reconstruct are another folder's
                1,
                '"user.eve.Trash/^^/^^/bob": {"uniqueid": "q0gmaaaaaaaaaaaaaaaaaaaa", "partition": "default", '
                '"mbtype": "el"},',
            ),
        ),
        check=None,
    )
    assert "name component 'Trash/../../bob'" in one_error(r)


def test_forged_manifest_layout_refused(world):
    b = world

    def change(manifest, lines):
        manifest["layout"]["partitions"]["default"] = "/var/../../etc"

    r = restore(b, "list", "--archive", forge(b, "layout", change), check=None)
    assert "partition-default '/var/../../etc' is not a plain absolute path" in one_error(r)


def test_forged_cyrus_version_refused_unless_force(world):
    b, sb = world, world["sb"]

    def manifest_only(manifest, lines):
        manifest["cyrus_version"] = "cyrus-imapd 3.10.2-Debian"

    args = ("mailbox", "user/bob/Archive 2019", "--into", "user/bob/V", "--archive")
    r = restore(b, *args, forge(b, "version", manifest_only), check=None)
    line = one_error(r)
    assert "the manifest says cyrus-imapd 3.10.2-Debian but cyrus-version.txt says" in line and "--force" in line
    assert "user.bob.V" not in _boxes_by_name(sb)

    def both(manifest, lines):
        manifest["cyrus_version"] = "cyrus-imapd 3.10.2-Debian"

    name = forge(b, "version2", both, [(b["work"] + "/dump/cyrus-version.txt", b"cyrus-imapd 3.10.2-Debian\n", 0o600)])
    r = restore(b, *args, name, check=None)
    line = one_error(r)
    assert "was made by Cyrus 3.10" in line and "this server runs the older 3.6" in line
    assert "user.bob.V" not in _boxes_by_name(sb)
    # onto an older Cyrus: refused with --force too (its formats are newer than this Cyrus reads)
    r = restore(b, *args, name, "--force", check=None)
    assert "this server runs the older 3.6" in one_error(r)
    assert "user.bob.V" not in _boxes_by_name(sb)


def test_files_that_are_not_plain_data_never_reach_the_spool(world):
    """An archive whose mailbox directory also holds a symlink to a root-only
    file, a FIFO and a set-uid executable: the mailbox comes back, those do not
    (named in a warning), and every placed file is the cyrus user's plain file."""
    b, sb = world, world["sb"]
    lay = storage.PathLayout.from_layout(discover(sb.imapd_conf))
    box = _boxes_by_name(sb)["user.bob.Archive 2019"]
    d = storage.data_dir(lay, box)
    name = forge(
        b,
        "specials",
        lambda m, lines: None,
        [
            (d + "/cyrus.evil-link", ("/etc/shadow",), 0),
            (d + "/fifo", None, 0),
            (d + "/evil.sh", b"#!/bin/sh\nid\n", 0o4755),
        ],
    )
    before = snapshot(sb)
    delete_user(sb, "bob")
    r = restore(b, "user", "bob", "--archive", name, check=0)
    assert (
        stat.S_IMODE(
            os.stat(os.path.join(storage.data_dir(lay, _boxes_by_name(sb)["user.bob.Archive 2019"]), "evil.sh")).st_mode
        )
        == 0o644
    )
    assert "left out 2 entries that are not regular files or directories" in r.stderr, r.stderr
    assert "cyrus.evil-link (a symlink)" in r.stderr and "fifo (a FIFO)" in r.stderr
    new = storage.data_dir(lay, _boxes_by_name(sb)["user.bob.Archive 2019"])
    assert not os.path.lexists(os.path.join(new, "cyrus.evil-link")) and not os.path.lexists(os.path.join(new, "fifo"))
    for root, dirs, files in os.walk(os.path.dirname(new)):
        for n in dirs + files:
            st = os.lstat(os.path.join(root, n))
            assert (st.st_uid, st.st_gid) == (sb.uid, sb.gid), n
            assert not stat.S_ISLNK(st.st_mode) and not st.st_mode & 0o7000, n
    after = snapshot(sb)
    assert after["bob"] == before["bob"]
