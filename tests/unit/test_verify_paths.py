"""The restore drill's directories and the values it writes to a config,
without Cyrus or root: what another user could plant or swap is refused."""

import contextlib
import os
import stat
import types

import pytest

from borg_cyrus.cyrus import sandbox, storage
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.restore import drillserver, full, session, verify
from borg_cyrus.safety import trust


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_drill_parent_is_made_with_its_mode_whatever_the_umask(tmp_path):
    target = tmp_path / "work" / "verify"
    with umask(0o077):
        real = verify.drill_parent(str(target), "fix it")
    assert real == os.path.realpath(target) and mode(target) == verify.PARENT_MODE
    with umask(0o077):
        base, lock = verify.make_private(real)
    os.close(lock)
    assert mode(base) == verify.DRILL_MODE and os.path.dirname(base) == real


def test_a_killed_drill_is_removed_a_running_or_kept_one_is_not(tmp_path):
    running, lock = verify.make_private(str(tmp_path))
    killed, dead = verify.make_private(str(tmp_path))
    os.makedirs(os.path.join(killed, "root", "spool"))
    os.close(dead)  # its verify died: nobody holds its lock
    kept = tmp_path / "verify-kept"
    (kept / "root").mkdir(parents=True)  # --keep removes the lock file
    (tmp_path / "other").mkdir()
    try:
        assert verify.clean_stale(str(tmp_path)) == [killed]
        assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(running), "verify-kept", "other"])
    finally:
        os.close(lock)
    assert verify.clean_stale(str(tmp_path)) == [running]


def test_drill_parent_writable_by_others_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # sticky, like /var/tmp: fine above the drill's directory, never as it
    with pytest.raises(BorgCyrusError, match=r"shared is writable by others \(mode 1777\).*fix it"):
        verify.drill_parent(str(shared), "fix it")
    assert verify.drill_parent(str(shared / "mine"), "fix it").endswith("/shared/mine")
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(BorgCyrusError, match=r"loose \(on the way to .*/loose/drill\) is writable by others"):
        verify.drill_parent(str(loose / "drill"), "fix it")
    assert not (loose / "drill").exists()


def test_drill_parent_through_a_symlink_is_checked_where_it_leads(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    (tmp_path / "link").symlink_to(loose)
    with pytest.raises(BorgCyrusError, match="loose is writable by others"):
        verify.drill_parent(str(tmp_path / "link"), "fix it")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BorgCyrusError, match="is not a directory"):
        verify.drill_parent(str(tmp_path / "file"), "fix it")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory of another user needs root")
def test_drill_parent_of_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(BorgCyrusError, match="belongs to uid 65534, not to root"):
        verify.drill_parent(str(theirs), "fix it")
    with pytest.raises(BorgCyrusError, match=r"theirs \(on the way to .*\) belongs to uid 65534"):
        verify.drill_parent(str(theirs / "below"), "fix it")


def test_ensure_dir_makes_explicit_modes_and_never_goes_through_a_planted_link(tmp_path):
    with umask(0o077):
        assert sandbox.ensure_dir(str(tmp_path / "a" / "b"), 0o750, owner=(os.getuid(), os.getgid()))
    assert mode(tmp_path / "a") == 0o755 and mode(tmp_path / "a" / "b") == 0o750
    victim = tmp_path / "victim"
    victim.mkdir()
    victim.chmod(0o700)
    (tmp_path / "a" / "sieve").symlink_to(victim)
    if os.geteuid() == 0:  # a link of another user (root's own, in root's own directory, is followed)
        os.lchown(tmp_path / "a" / "sieve", 65534, 65534)
    for path in (tmp_path / "a" / "sieve", tmp_path / "a" / "sieve" / "below"):
        with pytest.raises(BorgCyrusError, match="is a symlink; refusing"):
            sandbox.check_dir_path(str(path))
        with pytest.raises(BorgCyrusError, match="is a symlink; refusing"):
            sandbox.ensure_dir(str(path), 0o755, owner=(os.getuid(), os.getgid()))
    assert mode(victim) == 0o700 and os.listdir(victim) == []
    (tmp_path / "a" / "file").write_text("x")
    with pytest.raises(BorgCyrusError, match="is not a directory"):
        sandbox.ensure_dir(str(tmp_path / "a" / "file" / "x"), 0o750)


def test_restore_full_makes_its_directories_with_their_modes_whatever_the_umask(tmp_path):
    with umask(0o077):
        full._mkdir(str(tmp_path / "search"), 0o750, (os.getuid(), os.getgid()))
        full._mkdir(str(tmp_path / "parent"), 0o755)
    assert mode(tmp_path / "search") == 0o750 and mode(tmp_path / "parent") == 0o755


@pytest.mark.parametrize(
    "key,value",
    [
        ("partition-second", "/srv/spool\nmetapartition-second: /victim"),
        ("sievedir", "/srv/sieve\r"),
        ("configdirectory", "/srv/conf\x00"),
        ("defaultdomain", "example.org\u2028admins: eve"),
        ("bad key", "x"),
        ("x\nadmins", "eve"),
    ],
)
def test_render_conf_refuses_what_breaks_out_of_a_line(key, value):
    with pytest.raises(BorgCyrusError, match="not a plain key and value"):
        sandbox.render_conf({"configdirectory": "/srv/conf", key: value}, "drill")


def test_render_conf_writes_plain_values():
    assert sandbox.render_conf({"a": "/x y", "b_db": "twoskip"}, "drill") == "a: /x y\nb_db: twoskip\n"


def _drill(tmp_path):
    d = verify.Drill(None, None, "forged", str(tmp_path))
    os.makedirs(d.root)
    return d


def test_a_location_the_archive_replaced_stops_the_drill(tmp_path):
    d = _drill(tmp_path)
    os.makedirs(d.root + "/srv/spool")
    d.check_location("partition-default", "/srv/spool")
    d.check_location("sievedir", "/srv/sieve")  # not in the archive: made empty
    d.removed = {"/srv/sieve": "a symlink", "/var/lib": "a symlink"}
    with pytest.raises(trust.UntrustedEntry, match=r"sievedir /srv/sieve is a symlink in the archive.*forged"):
        d.check_location("sievedir", "/srv/sieve")
    with pytest.raises(trust.UntrustedEntry, match=r"/var/lib/cyrus \(its parent /var/lib\) is a symlink"):
        d.check_location("configdirectory", "/var/lib/cyrus")
    with open(d.root + "/srv/spool2", "w"):
        pass
    with pytest.raises(trust.UntrustedEntry, match="partition-x /srv/spool2 is not a regular file"):
        d.check_location("partition-x", "/srv/spool2")


def _layout(**kw):
    base = dict(configdirectory="/var/lib/cyrus", partitions={"default": "/var/spool/cyrus"}, sievedir="/var/sieve")
    base.update(kw)
    return storage.PathLayout(**base)


@pytest.mark.parametrize(
    "layout,databases,expect",
    [
        (_layout(sievedir="/var/../../victim"), {}, "sievedir"),
        (_layout(partitions={"default": "/var/spool\nmetapartition-default: /victim"}), {}, "partition-default"),
        (_layout(), {"annotations": {"backend": "twoskip", "path": "/var/lib/../../etc/x"}}, "annotations database"),
        (_layout(), {"seen": {"path": "/var/lib/cyrus/x\nadmins: eve"}}, "seen database"),
    ],
)
def test_the_archived_layout_checks_of_every_restore(layout, databases, expect):
    dump = types.SimpleNamespace(manifest={"layout": {"databases": databases}}, mailboxes=[])
    with pytest.raises(trust.UntrustedEntry, match=f"archive a: manifest.json: {expect} .* forged"):
        session.check_archived(dump, layout, "archive a")


def test_carried_settings_are_plain_words():
    d = types.SimpleNamespace(where="archive a")
    for key, value in (("defaultdomain", "example.org"), ("metapartition_files", "header index"), ("x_db", "lmdb")):
        assert drillserver.carried_value(d, key, value) == value
    for key, value in (("defaultdomain", "a\nadmins: eve"), ("defaultpartition", "../x"), ("quota_db", "a b;c")):
        with pytest.raises(trust.UntrustedEntry, match="is not a value the drill carries over"):
            drillserver.carried_value(d, key, value)
