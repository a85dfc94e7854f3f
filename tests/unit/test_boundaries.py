"""The security boundaries without root (docs/security.md): file access that
follows nothing and never blocks, refused locations, checks of names and
paths from Cyrus and archives, the run's deadline, the plugin facade."""

import os
import signal
import stat
import time

import pytest

from borg_cyrus import state as state_mod
from borg_cyrus.backup import busy
from borg_cyrus.cyrus import storage
from borg_cyrus.cyrus.mboxlist import Mailbox
from borg_cyrus.cyrus.names import display, parent_name, to_intname
from borg_cyrus.errors import BorgCyrusError, DeadlineError
from borg_cyrus.hookspecs import hookimpl
from borg_cyrus.model import DumpRecord
from borg_cyrus.plugins import Plugins, make_manager
from borg_cyrus.safety import pathpolicy, safeio, trust


# -- safeio ---------------------------------------------------------------------


def test_open_regular_refuses_symlinks_and_never_blocks_on_a_fifo(tmp_path):
    target = tmp_path / "secret"
    target.write_text("x")
    os.symlink(target, tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(safeio.NotRegularFile, match="a symlink"):
        safeio.open_regular(str(tmp_path / "link"))
    t0 = time.monotonic()
    with pytest.raises(safeio.NotRegularFile, match="a FIFO"):
        safeio.read_bytes(str(tmp_path / "fifo"))
    assert time.monotonic() - t0 < 1
    assert safeio.read_bytes(str(tmp_path / "link"), follow=True) == b"x"
    with pytest.raises(BorgCyrusError, match="larger than 0 bytes"):
        safeio.read_bytes(str(target), limit=0)


def test_new_files_never_go_through_a_planted_name(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, tmp_path / "planted")
    with pytest.raises(FileExistsError):
        safeio.create_file(str(tmp_path / "planted"), b"evil")
    src = tmp_path / "src"
    src.write_text("data")
    with pytest.raises(FileExistsError):
        safeio.copy_regular(str(src), str(tmp_path / "planted"))
    assert victim.read_text() == "keep"
    safeio.copy_regular(str(src), str(tmp_path / "copy"), mode=0o640)
    assert (tmp_path / "copy").read_text() == "data" and stat.S_IMODE(os.stat(tmp_path / "copy").st_mode) == 0o640


def test_sanitize_tree_leaves_only_plain_data(tmp_path):
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "1.").write_text("msg")
    os.chmod(tree / "a" / "1.", 0o4755)
    os.symlink("/etc/shadow", tree / "a" / "b" / "link")
    os.mkfifo(tree / "a" / "fifo")
    removed = safeio.sanitize_tree(str(tree), os.getuid(), os.getgid())
    assert sorted(removed) == [("a/b/link", "a symlink"), ("a/fifo", "a FIFO")]
    assert stat.S_IMODE(os.stat(tree / "a" / "1.").st_mode) == 0o644
    assert sorted(os.listdir(tree / "a")) == ["1.", "b"]


def test_chown_tree_to_oneself_changes_nothing_and_follows_nothing(tmp_path):
    (tmp_path / "d").mkdir()
    os.symlink("/", tmp_path / "d" / "root")
    assert safeio.chown_tree(str(tmp_path / "d"), os.getuid(), os.getgid()) == 0


def test_blocking_parent(tmp_path):
    d = tmp_path / "a" / "b"
    d.mkdir(parents=True)
    os.chmod(tmp_path / "a", 0o700)
    try:
        blocked = safeio.blocking_parent(str(d), 65534, 65534)
        assert blocked and blocked[0] == str(tmp_path / "a") or stat.S_IMODE(os.stat(tmp_path).st_mode) & 0o001 == 0
        assert safeio.blocking_parent(str(d), os.getuid(), os.getgid()) is None
    finally:
        os.chmod(tmp_path / "a", 0o755)


# -- locations --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, why",
    [
        ("/", "system directory /"),
        ("/var/spool", "system directory /var/spool"),
        ("/tmp/../etc", "'..'"),
        ("relative", "not an absolute path"),
        ("/proc/1/root", "inside /proc"),
        ("/srv/mail", None),
    ],
)
def test_system_directories(path, why):
    got = pathpolicy.system_reason(path)
    assert (why is None and got is None) or (why and why in got)


def test_database_files_and_overlaps():
    assert pathpolicy.file_reason("/etc/passwd") and pathpolicy.file_reason("/var/lib/cyrus/../x.db")
    assert pathpolicy.file_reason("/var/lib/cyrus/mailboxes.db") is None
    assert pathpolicy.check_apart([("work_directory", "/var/lib/cyrus/bc")], [("configdirectory", "/var/lib/cyrus")])
    assert (
        pathpolicy.check_apart([("work_directory", "/var/lib/borg-cyrus")], [("configdirectory", "/var/lib/cyrus")])
        is None
    )


# -- names and entries from Cyrus and archives ----------------------------------------


@pytest.mark.parametrize(
    "mb, why",
    [
        (Mailbox("user.bob", "/etc/x", "default"), "uniqueid"),
        (Mailbox("user.bob", "ab\ncd", "default"), "uniqueid"),
        (Mailbox("user.bob", "abc", "../x"), "partition"),
        (Mailbox("user.bob.^^", "abc", "default", "el"), None),  # a mail user's '..' folder: data (test_names_are_data)
        (Mailbox("user.bob.Trash/^^/^^/eve", "abc", "default", "el"), "component 'Trash/../../eve'"),
        (Mailbox("user.bob..x", "abc", "default"), "component ''"),
        (Mailbox("user.b\x01b", "abc", "default"), "control character"),
        (Mailbox("user.bob", "q0gm2xb7nqbdlh3c9a4ulu8w", "default"), None),
    ],
)
def test_mailbox_entries(mb, why):
    got = trust.mailbox_problem(mb)
    assert (why is None and got is None) or (why and why in got)


def test_paths_built_from_entries_stay_inside():
    lay = storage.PathLayout(configdirectory="/c", partitions={"default": "/p"}, sievedir="/s")
    d = storage.data_dir(lay, Mailbox("user.a", "q0gm2xb7nqbdlh3c9a4ulu8w", "default"))
    assert d == "/p/uuid/q/0/q0gm2xb7nqbdlh3c9a4ulu8w" and trust.inside(d, ["/p"])
    with pytest.raises(trust.UntrustedEntry):
        trust.check_inside("/p/../etc/x", ["/p"], "restoring x")
    with pytest.raises(trust.UntrustedEntry):
        trust.check_archived_path("/var/../../etc", "partition-x", "archive a")
    with pytest.raises(trust.UntrustedEntry):
        trust.check_userid("../../etc")


def test_cyrus_series():
    assert trust.cyrus_series("cyrus-imapd 3.6.1-Debian-3.6.1-4+deb12u5") == (3, 6)
    assert trust.cyrus_series("cyrus-imapd 3.10.2") == (3, 10)
    assert trust.cyrus_series("garbage") is None


def test_names_round_trip():
    assert to_intname("user/alice/Entwürfe") == "user.alice.Entw&APw-rfe"
    assert display("user.alice.Entw&APw-rfe") == "user/alice/Entwürfe"
    assert to_intname("user/bob/dot.in.name") == "user.bob.dot^in^name"
    assert parent_name("example.com!user.bob.x") == "example.com!user.bob" and parent_name("user") is None


# -- run state and deadline -----------------------------------------------------------


def test_deadline_fails_the_run():
    with pytest.raises(DeadlineError, match="did not finish within 0.1 s"):
        with busy.Deadline(0.1, "before"):
            time.sleep(2)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_state_file_that_is_a_symlink_is_not_trusted(tmp_path):
    os.symlink(tmp_path / "elsewhere", tmp_path / "state.json")
    with pytest.raises(BorgCyrusError, match="cannot open the state file safely"):
        state_mod.State(str(tmp_path / "state.json")).load()
    state_mod.write_atomic(str(tmp_path / "f"), "x", mode=0o600)
    assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == 0o600


# -- the plugin facade ------------------------------------------------------------------


class _A:
    @staticmethod
    @hookimpl
    def dump(dump_dir):
        return [DumpRecord("a.txt", ["a.txt"])]


class _B:
    @staticmethod
    @hookimpl
    def dump(dump_dir, mailboxes):
        return [DumpRecord("b.txt", ["b.txt"], len(mailboxes))]

    @staticmethod
    @hookimpl
    def modes():
        from borg_cyrus.providers.live import Live

        return [Live]


def test_records_are_attributed_and_modes_unique():
    pm = make_manager(load_entry_points=False)
    pm.register(_A, name="aaa")
    pm.register(_B, name="bbb")
    plugins = Plugins(pm)
    recs = plugins.dump(None, None, "/d", [1, 2])
    assert {(r.name, r.plugin, r.records) for r in recs} == {("a.txt", "aaa", None), ("b.txt", "bbb", 2)}
    assert plugins.mode_plugin("live") == "bbb"
    pm2 = make_manager()
    pm2.register(_B, name="bbb")
    with pytest.raises(BorgCyrusError, match="mode 'live' is provided twice"):
        Plugins(pm2).modes()


def test_tracing_covers_hooks_called_per_plugin(monkeypatch, caplog):
    """BORG_CYRUS_TRACE_PLUGINS=1 logs every hook call, including those the
    facade makes one plugin at a time (modes, dump, restore_dump)."""
    import logging

    monkeypatch.setenv("BORG_CYRUS_TRACE_PLUGINS", "1")
    pm = make_manager(load_entry_points=False)
    pm.register(_A, name="aaa")
    pm.register(_B, name="bbb")
    caplog.set_level(logging.INFO, logger="borg_cyrus.plugins")
    plugins = Plugins(pm)
    plugins.modes()
    plugins.dump(None, None, "/d", [])
    traced = " ".join(r.getMessage() for r in caplog.records)
    assert "modes" in traced and "dump" in traced
