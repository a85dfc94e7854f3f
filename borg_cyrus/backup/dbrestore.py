"""The restore side of the `databases` plugin: every database rebuilt from
its text dump (backup/databases.py, `dump/databases/index.jsonl`) in the
backend this server is configured for.

A database is rebuilt when its file is missing (a host that could not read
the archived binary files, or every raw database deleted before the
restore), when this server uses another backend than the archived one
(twoskip <-> skiplist, flat, quotalegacy <-> a quota db, …; the live
backends come from `cyr_info conf-all`, Cyrus's own effective values), or
when the dump is newer than the files in place (`restore full
--dumps-from`). A file of the right backend that is present is kept.

Key-value databases are made empty in the target backend (`cvt_cyrusdb`
from an empty flat file; a quotalegacy directory is a directory) and loaded
with `cyr_dbtool ... batch`; SQLite ones (dav.db) are rebuilt from their SQL
text by a child running as the cyrus user, which also makes the per-user
directories. The old file, if any, is moved aside, never deleted.
"""

import json
import logging
import os
import sqlite3
import tempfile
import time

from borg_cyrus.cyrus import dbbatch, dbfiles, storage
from borg_cyrus.cyrus.dbformats import DbError
from borg_cyrus.cyrus.layout import DATABASES, USER_DATABASES
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.safety import privdrop, trust

log = logging.getLogger(__name__)

SQL_KINDS = ("dav", "caldav_alarm")
# what Cyrus regenerates (not dumped): a file of another backend than this server's is moved aside
CACHES = ("duplicate", "tls_sessions", "ptscache", "statuscache", "zoneinfo", "sync_cache")
NOT_REBUILT = ("counters",)  # Cyrus's own fixed-size file: Cyrus recreates it


def live_backends(ctx):
    """{kind: backend} this server uses: `cyr_info conf-all` (effective values,
    defaults included), else what imapd.conf says."""
    out = {k: b for k, (b, _p) in ctx.layout.databases.items()}
    values = {}
    if ctx.tools.has("cyr_info"):
        r = ctx.cyrus("cyr_info", "conf-all", changes=False, check=False)
        if r.returncode == 0:
            for line in r.text.splitlines():
                key, sep, value = line.partition(": ")
                if sep:
                    values[key.strip()] = value.strip()
    for name, (key, _path_key, _default) in DATABASES.items():
        if values.get(key):
            out[name] = values[key]
    if values.get("quota_db"):
        out["quota"] = values["quota_db"]
    for kind, (key, default, _suffix) in USER_DATABASES.items():
        out[kind] = values.get(key, default) if key else default
    return out


def load_index(dump):
    path = dump.file(os.path.join("databases", "index.jsonl"))
    if not path:
        return None, []
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(ln) for ln in f if ln.strip()]
    if not lines or lines[0].get("format") != "borg-cyrus databases":
        raise BorgCyrusError(f"{path} is not a borg-cyrus databases index; the dump is damaged")
    return lines[0], [e for e in lines[1:] if isinstance(e, dict) and e.get("file") and not e.get("error")]


class Rebuild:
    def __init__(self, ctx, dump):
        self.ctx, self.dump, self.lay = ctx, dump, ctx.layout
        self.uid, self.gid = ctx.cyrus_ids()
        self.top = os.path.join(dump.path, "databases")
        self.report = []

    def target(self, entry, user_dir=None):
        """Where this server keeps the entry's database (the archived path,
        moved to this server's configdirectory), checked to lie inside it.
        user_dir: the per-user files' place on this server, (dir, uuid?)."""
        kind = entry["kind"]
        if kind in self.lay.databases and not entry.get("user"):
            return self.lay.database(kind)[1]
        if user_dir is not None and entry.get("user"):
            where, uuid = user_dir
            suffix = USER_DATABASES.get(kind, (None, None, kind))[2]
            path = os.path.join(where, f"{suffix}.db") if uuid else f"{where}{suffix}"
            return trust.check_inside(path, [self.lay.configdirectory], f"restoring the {kind} database")
        archived = self.dump.manifest.get("layout", {}).get("configdirectory") or self.lay.configdirectory
        path = entry["path"]
        if path.startswith(archived.rstrip("/") + "/"):
            path = self.lay.configdirectory.rstrip("/") + path[len(archived.rstrip("/")) :]
        return trust.check_inside(path, [self.lay.configdirectory], f"restoring the {kind} database")

    def why(self, entry, path, backend):
        if self.dump.replace:
            return "newer dump"
        if entry.get("backend") != backend:
            return f"{entry.get('backend')} -> {backend}"
        if not os.path.lexists(path):
            return "missing"
        if unreadable(path, backend):
            return "unreadable"
        return None

    def caches(self, backends):
        """Caches whose archived backend is not this server's: moved aside (Cyrus makes new ones)."""
        archived = {
            k: (v or {}).get("backend")
            for k, v in (self.dump.manifest.get("layout") or {}).get("databases", {}).items()
            if isinstance(v, dict)
        }
        stale = []
        for kind in CACHES:
            if (
                kind in self.lay.databases
                and archived.get(kind)
                and archived[kind] != backends.get(kind, archived[kind])
            ):
                path = self.lay.database(kind)[1]
                if os.path.isfile(path) and not os.path.islink(path):
                    stale.append((kind, path, f"{archived[kind]} -> {backends[kind]}"))
        if stale and not self.ctx.dry_run:
            stamp = time.strftime("%Y%m%d%H%M%S")
            privdrop.run_as(
                self.uid, self.gid, lambda: [os.rename(p, f"{p}.before-restore-{stamp}") for _k, p, _w in stale]
            )
        for kind, path, why in stale:
            self.report.append(
                f"{'would move' if self.ctx.dry_run else 'moved'} the {kind} cache {path} aside ({why}; Cyrus makes a new one)"
            )

    def run(self, backends, only_user=None, user_dir=None):
        _hdr, entries = load_index(self.dump)
        if only_user is None:
            self.caches(backends)
        todo = []
        for e in entries:
            if only_user is not None and e.get("user") != only_user:
                continue
            if e["kind"] in NOT_REBUILT:
                continue
            backend = "sqlite" if e["kind"] in SQL_KINDS else backends.get(e["kind"], e.get("backend"))
            path = self.target(e, user_dir)
            why = self.why(e, path, backend)
            if why:
                todo.append((e, path, backend, why))
        if not todo:
            return self.report
        if self.ctx.dry_run:
            for e, path, _backend, why in todo[:20]:
                self.report.append(f"would rebuild {path} ({e['kind']}, {why}) from its dump")
            if len(todo) > 20:
                self.report.append(f"… and {len(todo) - 20} more database(s)")
            return self.report
        self.prepare_dirs(todo)
        counts = {}
        for e, path, backend, why in todo:
            if e["kind"] not in SQL_KINDS:
                self.rebuild_kv(e, path, backend)
            counts[(e["kind"], why, backend)] = counts.get((e["kind"], why, backend), 0) + 1
        # read here (the dump is root-only), written by a child running as the cyrus user
        sql = [(read_entry(self.top, e).decode("utf-8"), p) for e, p, _b, _w in todo if e["kind"] in SQL_KINDS]
        if sql:
            privdrop.run_as(self.uid, self.gid, lambda: [_load_sql(t, p) for t, p in sql])
        for (kind, why, backend), n in sorted(counts.items()):
            self.report.append(f"rebuilt {n} {kind} database(s) from the text dumps ({why}; now {backend})")
        return self.report

    def prepare_dirs(self, todo):
        """Per-user directories, and the old files moved aside, as the cyrus user."""
        stamp = time.strftime("%Y%m%d%H%M%S")
        dirs = sorted({os.path.dirname(path) for _e, path, _b, _w in todo})
        olds = [path for _e, path, _b, _w in todo]

        def work():
            for d in dirs:
                os.makedirs(d, 0o750, exist_ok=True)
            moved = 0
            for p in olds:
                if os.path.lexists(p):
                    os.rename(p, f"{p}.before-restore-{stamp}")
                    moved += 1
            return moved

        moved = privdrop.run_as(self.uid, self.gid, work)
        if moved:
            self.report.append(f"moved {moved} old database file(s) aside (*.before-restore-{stamp})")

    def rebuild_kv(self, e, path, backend):
        records = dbbatch.parse(read_entry(self.top, e))
        if backend == "quotalegacy":
            privdrop.run_as(self.uid, self.gid, lambda: os.makedirs(path, 0o750, exist_ok=True))
        else:
            self.create_empty(path, backend)
        if records:
            self.ctx.cyrus("cyr_dbtool", path, backend, "batch", input=dbbatch.load_script(records))

    def create_empty(self, path, backend):
        d = os.path.dirname(path)
        fd, empty = tempfile.mkstemp(prefix=".borg-cyrus-empty-", dir=d)
        try:
            os.fchown(fd, self.uid, self.gid)
            os.close(fd)
            if backend == "flat":
                os.rename(empty, path)
                return
            self.ctx.cyrus("cvt_cyrusdb", empty, "flat", path, backend)
        finally:
            if os.path.lexists(empty):
                os.unlink(empty)


def unreadable(path, backend):
    """True if a database file in place cannot be read as backend (checked for
    twoskip and flat by the pure-Python readers, SQLite by quick_check;
    other backends are taken as they are)."""
    try:
        if backend in dbfiles.PURE_BACKENDS:
            dbfiles.read_records(path, backend)
        elif backend == "sqlite":
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                return con.execute("PRAGMA quick_check").fetchone()[0] != "ok"
            finally:
                con.close()
    except dbfiles.NeedsTool:
        return backend in dbfiles.PURE_BACKENDS  # not of its format at all
    except (DbError, BorgCyrusError, OSError, sqlite3.DatabaseError):
        return True
    return False


def read_entry(top, entry):
    """The dump of one index entry: its file, or `bytes` at `offset` of it (index version 2)."""
    path = os.path.join(top, entry["file"])
    with open(path, "rb") as f:
        if "offset" not in entry:
            return f.read()
        f.seek(int(entry["offset"]))
        data = f.read(int(entry["bytes"]))
    if len(data) != int(entry["bytes"]):
        raise BorgCyrusError(
            f"{path}: shorter than its index says ({entry['kind']} of {entry.get('user')}); the dump is damaged"
        )
    return data


def _load_sql(script, path):
    """Runs as the cyrus user: a new SQLite database from its SQL text."""
    con = sqlite3.connect(path)
    try:
        con.executescript(script)
    finally:
        con.close()
    return path


def user_quota(ctx, dump, userid, backends):
    """`restore user`: the user's quota limits (the records of its quota
    roots) set in this server's quota database from the dump, whatever
    backend either side uses; `quota -f` fixes the usage afterwards."""
    inbox = next((mb for mb in dump.mailboxes if mb.userid == userid and mb.is_inbox), None)
    _hdr, entries = load_index(dump)
    entry = next((e for e in entries if e["kind"] == "quota" and not e.get("user")), None)
    if inbox is None or entry is None:
        return []
    root = storage.user_root(inbox).encode()
    records = [
        (k, v)
        for k, v in dbbatch.parse(read_entry(os.path.join(dump.path, "databases"), entry))
        if k == root or k.startswith(root + b".")
    ]
    if not records:
        return []
    backend, path = ctx.layout.database("quota")
    backend = backends.get("quota", backend)
    ctx.cyrus("cyr_dbtool", path, backend, "batch", input=dbbatch.load_script(records))
    return [f"set the limits of {len(records)} quota root(s) of {userid} from the dump ({backend})"]


def restore(ctx, dump, only_user=None, user_dir=None):
    """Report lines: what was rebuilt, and how. only_user: that user's
    databases only (`restore user`), placed at user_dir = (the live per-user
    directory, True) or (the legacy file prefix `.../user/h/name.`, False)."""
    backends = live_backends(ctx)
    report = Rebuild(ctx, dump).run(backends, only_user=only_user, user_dir=user_dir)
    if only_user is not None and not ctx.dry_run:
        report += user_quota(ctx, dump, only_user, backends)
    return report
