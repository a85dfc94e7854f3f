"""Planning without root or Cyrus: a layout discovered from a written
imapd.conf, the built-in plugins through the real plugin manager, and a
fake Runner (it records argv and answers like the Cyrus tools would, so no
tool runs). What is checked is what borg-cyrus decides: locations, excludes,
the patterns file, the manifest, the consistency report, the service
commands, the dumps' parsing."""

import json
import os
import re
import struct
import zlib

import pytest

from borg_cyrus import config as config_mod
from borg_cyrus.backup import consistency, dumps, manifest, patterns
from borg_cyrus.backup.run import cross_check
from borg_cyrus.context import Context
from borg_cyrus.cyrus import dbbatch, layout as layout_mod
from borg_cyrus.cyrus.mboxlist import Mailbox
from borg_cyrus.cyrus.service import Service
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.execute import Result
from borg_cyrus.model import DumpRecord, Exclude, MailboxList, View, nest_free
from borg_cyrus.plugins import Plugins


class FakeRunner:
    """Records every argv; answers from `answers` {tool basename: (exit, stdout bytes)}."""

    def __init__(self, answers=None, dry_run=False):
        self.calls, self.answers, self.dry_run = [], dict(answers or {}), dry_run

    def run(self, argv, *, changes=True, input=None, stdout=None, check=True, **kw):
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        if changes and self.dry_run:
            return Result(argv, 0, skipped=True)
        code, out = self.answers.get(os.path.basename(argv[0]), (0, b""))
        if stdout is not None:
            stdout.write(out)
            out = b""
        if check and code:
            raise BorgCyrusError(f"{argv[0]} failed")
        return Result(argv, code, out)


@pytest.fixture
def ctx(tmp_path):
    root = tmp_path / "srv"
    for d in ("conf", "spool", "second", "meta", "sieve", "work"):
        (root / d).mkdir(parents=True)
    conf = tmp_path / "imapd.conf"
    conf.write_text(
        f"configdirectory: {root}/conf\npartition-default: {root}/spool\n"
        f"partition-second: {root}/second\nmetapartition-default: {root}/meta\n"
        f"metapartition_files: header index\nsievedir: {root}/sieve\n"
        f"duplicate_db_path: {root}/dup/deliver.db\n"
    )
    cfgfile = tmp_path / "borg-cyrus.yaml"
    cfgfile.write_text(f"imapd_conf: {conf}\nwork_directory: {root}/work\nexclude: {{mailboxes: ['user/*/Junk']}}\n")
    cfgfile.chmod(0o600)
    plugins = Plugins()
    cfg = config_mod.load(
        str(cfgfile), True, config_mod.full_schema(plugins.config_schema_fragments(), plugins.modes())
    )
    lay = layout_mod.discover(str(conf))
    tools = layout_mod.Tools(
        "/cyrus/bin", {n: f"/cyrus/bin/{n}" for n in layout_mod.REQUIRED_TOOLS + layout_mod.RESTORE_TOOLS + ("mbpath",)}
    )
    c = Context(config=cfg, layout=lay, tools=tools, runner=FakeRunner(), plugins=plugins)
    c.root = root
    return c


BOXES = [
    Mailbox("user.alice", "a1b2c3d4e5f6a7b8c9d0e1f2", "default", "e"),
    Mailbox("user.alice.Junk", "b1b2c3d4e5f6a7b8c9d0e1f2", "second", "e"),
    Mailbox("user.dave", "c1b2c3d4e5f6a7b8c9d0e1f2", "default", "el"),
    Mailbox("user.dave.Junk", "d1b2c3d4e5f6a7b8c9d0e1f2", "default", "el"),
    Mailbox("user.alice.Trash", "e1b2c3d4e5f6a7b8c9d0e1f2", "", "d"),
]


def test_locations_name_every_place_cyrus_keeps_data(ctx):
    locs = {loc.path: loc for loc in ctx.plugins.locations(ctx)}
    r = str(ctx.root)
    for path, kind in [
        (f"{r}/conf", "data"),
        (f"{r}/spool", "data"),
        (f"{r}/second", "data"),
        (f"{r}/meta", "data"),
        (f"{r}/sieve", "data"),
        (f"{r}/dup/deliver.db", "data"),
        (ctx.layout.imapd_conf, "config"),
        (ctx.dump_dir, "dump"),
    ]:
        assert locs[path].kind == kind, path
    assert not locs[f"{r}/dup/deliver.db"].required


def test_excludes_regenerable_and_mailboxes_uuid_and_legacy(ctx):
    r = str(ctx.root)
    mbpath = [
        {
            "mbname": {"intname": "user.dave.Junk"},
            "data": f"{r}/spool/d/user/dave/Junk",
            "meta": f"{r}/meta/d/user/dave/Junk",
        }
    ]
    ctx.runner.answers["mbpath"] = (0, json.dumps(mbpath[0]).encode())
    view = View(imapd_conf=ctx.layout.imapd_conf, layout=ctx.layout)
    ex = ctx.plugins.excludes(ctx, view, BOXES)
    by_mailbox = {}
    for e in ex:
        if e.mailbox:
            by_mailbox.setdefault(e.mailbox, []).append(e)
    assert sorted(by_mailbox) == ["user.alice.Junk", "user.dave.Junk"]
    alice = {e.path for e in by_mailbox["user.alice.Junk"]}
    assert alice == {f"{r}/second/uuid/b/1/b1b2c3d4e5f6a7b8c9d0e1f2"}  # second has no metapartition
    dave = {(e.path, e.regex) for e in by_mailbox["user.dave.Junk"]}
    assert (f"{r}/spool/d/user/dave/Junk", r"[0-9]+\.") in dave and (
        f"{r}/meta/d/user/dave/Junk",
        r"cyrus\.cache",
    ) in dave
    assert ["/cyrus/bin/mbpath", "-C", ctx.layout.imapd_conf, "-j", "--", "user/dave/Junk"] in ctx.runner.calls
    reasons = {e.reason for e in ex}
    assert "duplicate-db: deliver.db" in reasons and "runtime: pid files" in reasons


def test_patterns_through_a_snapshot_keep_original_paths(ctx):
    r = str(ctx.root)
    view = View(imapd_conf="x", layout=ctx.layout, prefixes={f"{r}/spool": "/snaps"})
    text = patterns.render(
        nest_free([f"{r}/spool", f"{r}/spool/uuid", f"{r}/conf"]),
        [Exclude(f"{r}/spool/uuid/a", r"[0-9]+\.", "x"), Exclude(f"{r}/conf/deliver.db")],
        view,
    )
    lines = text.splitlines()
    assert f"R /snaps/.{r}/spool" in lines and f"R {r}/conf" in lines
    assert not any(ln.startswith("R ") and ln.endswith("/spool/uuid") for ln in lines)
    assert "- re:^" + re.escape(f"snaps{r}/spool/uuid/a") + r"/[0-9]+\.$" in lines
    assert f"- pp:{r}/conf/deliver.db" in lines
    with pytest.raises(ValueError):
        patterns.render([f"{r}/spool\nR /etc"], [], view)


def _index(path, exists, last_uid, used, nrec=None, truncate=0):
    nrec = exists if nrec is None else nrec
    start, rsize = 160, 112
    hdr = bytearray(start)
    struct.pack_into(">IIII", hdr, 8, 17, start, rsize, nrec)
    struct.pack_into(">I", hdr, 28, last_uid)
    struct.pack_into(">Q", hdr, 32, used)
    struct.pack_into(">I", hdr, 44, 1234)
    struct.pack_into(">I", hdr, 84, exists)
    struct.pack_into(">I", hdr, start - 4, zlib.crc32(bytes(hdr[: start - 4])))
    data = bytes(hdr) + b"\0" * (nrec * rsize)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data[: len(data) - truncate] if truncate else data)


def test_consistency_counts_and_damaged_index(ctx):
    r = str(ctx.root)
    _index(f"{r}/meta/uuid/a/1/a1b2c3d4e5f6a7b8c9d0e1f2/cyrus.index", 3, 7, 4096)
    os.makedirs(f"{r}/second/uuid/b/1/b1b2c3d4e5f6a7b8c9d0e1f2")
    _index(f"{r}/second/uuid/b/1/b1b2c3d4e5f6a7b8c9d0e1f2/cyrus.index", 2, 2, 100, truncate=50)
    view = View(imapd_conf="x", layout=ctx.layout)
    rep = consistency.report(ctx, view, [b for b in BOXES if not b.legacy])
    assert rep.per_mailbox["user.alice"]["messages"] == 3 and rep.per_mailbox["user.alice"]["bytes"] == 4096
    assert rep.totals["messages"] == 5
    assert rep.report["damaged_indexes"]["user.alice.Junk"].startswith("cyrus.index is truncated (2 records")
    assert rep.report["unlisted_mailboxes"] == []


def test_unlisted_mailbox_directory_fails_unless_live_and_allowed(ctx):
    r = str(ctx.root)
    orphan = f"{r}/spool/uuid/z/z/zzzz00000000000000000000"
    os.makedirs(orphan)
    open(f"{orphan}/cyrus.header", "w").close()
    frozen = View(imapd_conf="x", layout=ctx.layout, description="btrfs snapshots")
    with pytest.raises(BorgCyrusError, match="mailboxes.db looks damaged or truncated"):
        consistency.report(ctx, frozen, BOXES[:1])
    live = View(imapd_conf="x", layout=ctx.layout)
    with pytest.raises(BorgCyrusError, match="warn-in-live"):
        consistency.report(ctx, live, BOXES[:1])
    ctx.config["consistency"]["unlisted_mailboxes"] = "warn-in-live"
    rep = consistency.report(ctx, live, BOXES[:1])
    assert rep.report["unlisted_mailboxes"] == [orphan] and rep.problems


def test_cross_check_of_the_two_mailbox_dumps():
    ml = MailboxList(DumpRecord("mailboxes.json", [], 14), [])
    db = DumpRecord("mailboxes.db.batch", [], 20, extra={"name_records": 13})
    assert cross_check(ml, [db], View("x", None))  # live: a problem, not an error
    with pytest.raises(BorgCyrusError, match="although it was frozen"):
        cross_check(ml, [db], View("x", None, description="stop-master"))
    assert (
        cross_check(ml, [DumpRecord("mailboxes.db.batch", [], 20, extra={"name_records": 14})], View("x", None)) == []
    )


def test_manifest_is_built_from_what_the_steps_returned(ctx):
    view = View(imapd_conf=ctx.layout.imapd_conf, layout=ctx.layout)
    ml = MailboxList(DumpRecord("mailboxes.json", ["mailboxes.json"], 2, plugin="dumps"), BOXES[:2])
    recs = [
        DumpRecord(
            "cyrus-version.txt",
            ["cyrus-version.txt"],
            1,
            plugin="dumps",
            manifest={"cyrus_version": "cyrus-imapd 3.6.1"},
        )
    ]
    cons = consistency.Report(
        {"counts": {}}, {"user.alice": {"messages": 1}}, {"messages": 1, "bytes": 9, "unreadable": 0}
    )
    ex = [Exclude("/x", None, "r", "user.alice.Junk"), Exclude("/y", None, "r", "user.alice.Junk")]
    m = manifest.build(ctx, view, ml, recs, cons, ex, ["p"], {"dumps": 0.1234})
    assert m["cyrus_version"] == "cyrus-imapd 3.6.1" and m["excluded_mailboxes"] == ["user.alice.Junk"]
    assert m["counts"] == {"messages": 1, "bytes": 9, "unreadable": 0, "mailboxes": 2, "users": 1}
    assert [d["name"] for d in m["dumps"]] == ["mailboxes.json", "cyrus-version.txt"]
    assert m["problems"] == ["p"] and m["timings"] == {"dumps": 0.123}
    clash = [DumpRecord("x", [], plugin="evil", manifest={"layout": {}})]
    with pytest.raises(BorgCyrusError, match="sets manifest key 'layout'"):
        manifest.build(ctx, view, ml, clash, cons, [], [], {})


def test_dumps_parse_what_the_tools_print(ctx, tmp_path):
    show = (
        dbbatch.literal(b"N\x1fuser\x1falice")
        + b" "
        + dbbatch.literal(b"%(I a1)")
        + b"\n"
        + dbbatch.literal(b"I\x1fa1")
        + b" "
        + dbbatch.literal(b"x")
        + b"\n"
    )
    ctx.runner.answers["cyr_dbtool"] = (0, show)
    (ctx.root / "conf" / "mailboxes.db").write_bytes(b"twoskip")
    view = View(imapd_conf=ctx.layout.imapd_conf, layout=ctx.layout)
    rec = dumps.dump_db(ctx, view, str(tmp_path), "mailboxes")
    assert (rec.name, rec.records, rec.extra["name_records"]) == ("mailboxes.db.batch", 2, 1)
    assert ctx.runner.calls[-1][-2:] == ["twoskip", "batch"]
    lines = '{\n"user.alice": {"uniqueid": "a1b2c3d4e5f6a7b8c9d0e1f2", "partition": "default", "mbtype": "e"}\n}\n'
    ctx.runner.answers["ctl_mboxlist"] = (0, lines.encode())
    d2 = tmp_path / "d2"
    d2.mkdir()
    ml = ctx.plugins.mailbox_list(ctx, view, str(d2))
    assert [mb.intname for mb in ml.mailboxes] == ["user.alice"] and ml.record.records == 1


@pytest.mark.parametrize(
    "entry, why",
    [
        ('{"uniqueid": "../../etc", "partition": "default"}', "not a Cyrus uniqueid"),
        ('{"uniqueid": "abc", "partition": "a/b"}', "not a partition name"),
    ],
)
def test_a_crafted_live_mailbox_list_fails_the_backup(ctx, tmp_path, entry, why):
    ctx.runner.answers["ctl_mboxlist"] = (0, ('{\n"user.eve": ' + entry + "\n}\n").encode())
    with pytest.raises(BorgCyrusError, match=why):
        ctx.plugins.mailbox_list(ctx, View(imapd_conf="x", layout=ctx.layout), str(tmp_path))


def test_an_empty_server_is_refused(ctx, tmp_path):
    ctx.runner.answers["ctl_mboxlist"] = (0, b"{}\n")
    with pytest.raises(BorgCyrusError, match="listed no mailboxes"):
        ctx.plugins.mailbox_list(ctx, View(imapd_conf="x", layout=ctx.layout), str(tmp_path))


def test_service_commands_per_manager():
    cfg = {
        "manager": "systemd",
        "systemd_unit": "cyrus-imapd.service",
        "init_script": "/etc/init.d/cyrus-imapd",
        "pidfile": "/nonexistent/pid",
        "start_command": [],
        "stop_timeout": 1,
        "start_timeout": 1,
    }
    fake = FakeRunner({"systemctl": (0, b"")})
    svc = Service(cfg, fake)
    svc.stop()
    svc.start()
    assert ["systemctl", "stop", "cyrus-imapd.service"] in fake.calls
    assert ["systemctl", "start", "cyrus-imapd.service"] in fake.calls
    cmd = Service(dict(cfg, manager="command", start_command=["/usr/sbin/cyrmaster", "-d"]), FakeRunner(dry_run=True))
    assert cmd.describe().startswith("pidfile /nonexistent/pid")
    cmd.start()  # dry run: recorded, not run, no wait
    assert cmd.runner.calls == [["/usr/sbin/cyrmaster", "-d"]]
    with pytest.raises(BorgCyrusError, match="start_command is not set"):
        Service(dict(cfg, manager="command"), FakeRunner()).start()
