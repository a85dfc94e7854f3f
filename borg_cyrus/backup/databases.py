"""Built-in plugin: every Cyrus database that holds state, dumped as text,
so a restore can rebuild it in any backend (or a Cyrus that cannot read the
archived binary files). mailboxes.db and annotations.db stay with the
`dumps` plugin (backup/dumps.py); caches and what Cyrus regenerates
(deliver.db, tls_sessions, ptscache, statuscache, zoneinfo, sync cache,
xapianactive) are not dumped.

What is dumped (read through the frozen view, so it describes the same
instant as the spool; original paths from imapd.conf):

| kind | where (original path) | backend key (default) |
|---|---|---|
| quota | quota_db_path or <configdirectory>/quota (a directory) | quota_db (quotalegacy) |
| userdeny | userdeny_db_path or <configdirectory>/user_deny.db | userdeny_db (flat) |
| backups, newsrc | backup_db_path, newsrc_db_path ... (if present) | backup_db, newsrc_db |
| caldav_alarm | <configdirectory>/caldav_alarm.sqlite3 (if present) | SQLite |
| seen, sub, mboxkey | per user: <configdirectory>/user/uuid/<u0>/<u1>/<INBOX uniqueid>/<kind>.db, legacy <configdirectory>/user/<h>/<user>.<kind> | seenstate_db (twoskip), subscription_db (flat), mboxkey_db (twoskip) |
| dav | per user, as above: dav.db (DAV objects; on 3.6 also the ManageSieve scripts and the active one) | SQLite |
| conversations, counters | per user, opt-in (`databases.conversations`, `databases.counters`) | conversations_db (skiplist); counters: Cyrus's own binary file |

Format of <dump_dir>/databases/ (self-describing; `index.jsonl` first):

- `index.jsonl`: line 1 a header `{"format": "borg-cyrus databases", "version": 1,
  "batch": ..., "sql": ...}`; then one JSON object per dumped database file:
  `kind`, `user` and `inbox` (the INBOX uniqueid; per-user kinds only), `path`
  (original absolute path), `backend` (as configured when archived), `via`
  (`reader`: the pure-Python reader of cyrus/dbformats.py, `cyr_dbtool`,
  `sqlite`, `counters`), `records`, `bytes`, `file` (relative to databases/)
  and, for per-user kinds, `offset`: the dump is `bytes` bytes at `offset` of
  `file` (dbrestore.read_entry). An entry with `error` instead of `file`
  names a database that was not dumped. One index instead of a manifest list
  keeps manifest.json small at 100k users; one file per kind instead of one
  per user and kind keeps file creation (~0.1-0.3 ms each on ext4) and
  borg's files cache out of it.
- `global/<kind>.batch`, `user/<kind>.batch` (every user's, concatenated): binary-safe
  records in cyr_dbtool batch SHOW format, every key and value a literal:
  `{n+}CRLF<key> {n+}CRLF<value>LF`, in the order cyr_dbtool lists them.
  dbbatch.parse() reads them; `cyr_dbtool DB BACKEND batch < load_script(records)`
  rebuilds the database in any backend (counters: (field, decimal) records).
- `....sql` (dav, caldav_alarm): SQL text, `PRAGMA user_version = N;` then
  SQLite's iterdump() (BEGIN ... COMMIT); `sqlite3 NEW.db < FILE` rebuilds it.

manifest.json gets a `databases` section: format, index, entries, kinds
({kind: files, records, bytes, backend}), problems (the first 50) and
problem_count; `dumps` gets one record per kind and one for the index.

A database that cannot be dumped is a warning, never followed or waited
for, and the backup goes on (its raw file is archived anyway): a symlink, FIFO
or device where a file belongs, a file not owned by the cyrus user, a damaged
or truncated file (the reader's one-line error), an SQLite file with a hot
journal or held by a writer for more than 2 s, a failing cyr_dbtool. A
database that changes while it is read (mode live) is read again twice
before it counts as damaged. Each problem is logged (the first 20) and listed
in the manifest and the index.

The restore side (`restore full`, `restore user`) is backup/dbrestore.py.
"""

import json
import logging
import os
import time

from borg_cyrus.backup import dbrestore, dbtool
from borg_cyrus.cyrus import dbbatch, dbfiles, storage
from borg_cyrus.cyrus.dbformats import DbError
from borg_cyrus.cyrus.layout import USER_DATABASES
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.hookspecs import hookimpl
from borg_cyrus.model import DumpRecord
from borg_cyrus.tools import progress

log = logging.getLogger(__name__)
PLUGIN = "databases"
DIR = "databases"
INDEX = "index.jsonl"
GLOBAL = ("quota", "userdeny", "backups", "newsrc")
MAX_LOGGED = 20

SCHEMA = {
    "databases": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": "Text dumps of every Cyrus database that holds state (quota, deny list, per-user "
        "seen, subscriptions, mboxkey, dav.db) into dump/databases/.",
        "properties": {
            "enabled": {"type": "boolean", "default": True, "description": "Write these dumps."},
            "conversations": {
                "type": "boolean",
                "default": False,
                "description": "Also dump each user's conversations database (regenerable with "
                "ctl_conversationsdb -b; a cyr_dbtool run per user with the default skiplist backend).",
            },
            "counters": {
                "type": "boolean",
                "default": False,
                "description": "Also dump each user's modseq counters file.",
            },
        },
    }
}


def _batch(records):
    return b"".join(dbbatch.literal(k) + b" " + dbbatch.literal(v) + b"\n" for k, v in records)


class Job:
    """One run of the plugin: reads every database, writes the dumps and the index."""

    def __init__(self, ctx, view, dump_dir):
        self.ctx, self.view = ctx, view
        self.top = os.path.join(dump_dir, DIR)
        self.uid = ctx.cyrus_ids()[0]
        # a dry run's view names mounts that were never made: its dumps read the live files
        self.live = ctx.dry_run or not view.prefixes
        self.read_path = (lambda p: p) if ctx.dry_run else view.read_path
        self.entries = []
        self.problems = []
        self.kinds = {}
        self._dirs = set()
        self._packs = {}  # rel -> [fd, size]
        self.tool = dbtool.ToolReader(ctx, view, self.live, self.uid)
        self.timing = {}

    # -- output ----------------------------------------------------------------
    def write(self, rel, data):
        d = os.path.dirname(rel)
        if d and d not in self._dirs:
            os.makedirs(os.path.join(self.top, d), 0o700, exist_ok=True)
            self._dirs.add(d)
        # a fresh private directory: O_EXCL|O_NOFOLLOW as everywhere, no fchmod/fchown (10k users: syscalls count)
        fd = os.open(
            os.path.join(self.top, rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def problem(self, entry, why):
        entry["error"] = why
        self.entries.append(entry)
        self.problems.append(why)
        if len(self.problems) <= MAX_LOGGED:
            log.warning("database not dumped: %s", why)

    def add(self, entry, rel, data, records, via):
        if entry.get("user"):  # appended to the kind's file (see the module docstring)
            rel = f"user/{entry['kind']}{os.path.splitext(rel)[1]}"
            if rel not in self._packs:
                self.write(rel, b"")
                self._packs[rel] = [os.open(os.path.join(self.top, rel), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW), 0]
            fd_off = self._packs[rel]
            entry["offset"] = fd_off[1]
            os.write(fd_off[0], data)
            fd_off[1] += len(data)
        else:
            self.write(rel, data)
        entry.update(via=via, records=records, bytes=len(data), file=rel)
        self.entries.append(entry)
        k = self.kinds.setdefault(entry["kind"], {"files": 0, "records": 0, "bytes": 0, "backend": entry["backend"]})
        k["files"] += 1
        k["records"] += records
        k["bytes"] += len(data)

    # -- reading -----------------------------------------------------------------
    def records(self, orig, read, backend):
        """(records, via) of a key-value database; raises DbError/BorgCyrusError/OSError."""
        tries = 1 if not self.live else 3
        for attempt in range(tries):
            try:
                return dbfiles.read_records(read, backend, self.uid), "reader"
            except dbfiles.NeedsTool:
                return self.tool.records(orig, read, backend), "cyr_dbtool"
            except DbError:
                if attempt == tries - 1:
                    raise
                time.sleep(0.05)  # live: a writer may have been between two writes
        raise AssertionError("unreachable")

    def cleanup(self):
        for fd, _size in self._packs.values():
            os.close(fd)
        self._packs.clear()
        self.tool.cleanup()

    # -- one database ------------------------------------------------------------
    def one(self, entry, orig, read, backend, rel):
        """Dump one database file (absent: nothing); problems are recorded, not raised."""
        entry.update(path=orig, backend=backend)
        try:
            if backend == "sqlite":
                data, n = dbfiles.dump_sqlite(read, self.uid)
                self.add(entry, rel + ".sql", data, n, "sqlite")
            elif backend == "counters":
                recs = dbfiles.read_counters(read, self.uid)
                self.add(entry, rel + ".batch", _batch(recs), len(recs), "counters")
            else:
                recs, via = self.records(orig, read, backend)
                self.add(entry, rel + ".batch", _batch(recs), len(recs), via)
        except FileNotFoundError:
            pass
        except (BorgCyrusError, OSError) as e:
            why = str(e) if isinstance(e, BorgCyrusError) else f"{read}: {e.strerror}"
            if read != orig:
                why += f" (original path {orig})"
            self.problem(entry, why)

    # -- what to dump --------------------------------------------------------------
    def global_dbs(self):
        live = self.ctx.layout
        for name in GLOBAL:
            backend, orig = live.database(name)
            entry = {"kind": name}
            if name == "quota":
                read = self.view.layout.database("quota")[1]  # the point-in-time copy in snapshot modes
                if backend == "quotalegacy":
                    if os.path.isdir(read) and not os.path.islink(read):
                        self.quota_dir(entry, orig, read, backend)
                    continue
            else:
                read = self.read_path(orig)
            self.one(entry, orig, read, backend, f"global/{name}")
        orig = os.path.join(live.configdirectory, "caldav_alarm.sqlite3")
        self.one({"kind": "caldav_alarm"}, orig, self.read_path(orig), "sqlite", "global/caldav_alarm")

    def quota_dir(self, entry, orig, read, backend):
        entry.update(path=orig, backend=backend)
        try:
            recs = self.tool.records(orig, read, backend, directory=True)
        except BorgCyrusError as e:
            self.problem(entry, str(e))
            return
        self.add(entry, "global/quota.batch", _batch(recs), len(recs), "cyr_dbtool")

    def user_kinds(self):
        opts = self.ctx.config.get("databases") or {}
        conf = self.ctx.layout.conf
        out = []
        for kind, (key, default, suffix) in USER_DATABASES.items():
            if kind in ("conversations", "counters") and not opts.get(kind):
                continue
            out.append((kind, conf.get(key, default) if key else default, suffix))
        return out

    def users(self, mailboxes):
        lay = storage.PathLayout.from_layout(self.ctx.layout)
        kinds = self.user_kinds()
        for mb in progress.each("dumps", [mb for mb in mailboxes if mb.is_inbox and mb.has_spool], "users"):
            if not (mb.is_inbox and mb.has_spool):
                continue
            user, u = mb.userid, mb.uniqueid
            if mb.legacy:
                base = storage.user_paths(lay, user, mb)["user"][0].rsplit(".", 1)[0]
                paths = {kind: f"{base}.{suffix}" for kind, _b, suffix in kinds}
                present = None
            else:
                d = storage.user_paths(lay, user, mb)["user"][0]
                paths = {kind: os.path.join(d, f"{suffix}.db") for kind, _b, suffix in kinds}
                present = self.listing(d)
            for kind, backend, _suffix in kinds:
                orig = paths[kind]
                if present is not None and os.path.basename(orig) not in present:
                    continue
                entry = {"kind": kind, "user": user, "inbox": u}
                self.one(entry, orig, self.read_path(orig), backend, f"user/{u[0]}/{u}.{kind}")

    def listing(self, d):
        """Names in a uuid-layout user directory (one syscall instead of a failed open per kind)."""
        try:
            return set(os.listdir(self.read_path(d)))
        except FileNotFoundError:
            return set()
        except OSError:
            return None  # not a directory, unreadable: let each open say why

    # -- results ---------------------------------------------------------------------
    def finish(self):
        header = {
            "format": "borg-cyrus databases",
            "version": 2,
            "batch": "cyr_dbtool batch SHOW records, every key and value a {n+} literal; "
            "load with cyr_dbtool DB BACKEND batch (BEGIN, SET, COMMIT)",
            "sql": "PRAGMA user_version, then sqlite3 iterdump(); load with sqlite3 DB < FILE",
            "view": self.view.description,
        }
        lines = [json.dumps(header, separators=(",", ":"))]
        lines += [json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in self.entries]
        index = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")
        self.write(INDEX, index)
        if len(self.problems) > MAX_LOGGED:
            log.warning("%d databases in all were not dumped; see %s/%s", len(self.problems), DIR, INDEX)
        section = {
            "format": 1,
            "index": f"{DIR}/{INDEX}",
            "entries": len(self.entries),
            "kinds": self.kinds,
            "problems": self.problems[:50],
            "problem_count": len(self.problems),
        }
        recs = [
            DumpRecord(
                f"{DIR}/{INDEX}",
                [f"{DIR}/{INDEX}"],
                len(self.entries),
                len(index),
                self.timing.get("all", 0.0),
                PLUGIN,
                {"format": "JSON lines: a header, then one entry per database file"},
                {"databases": section},
            )
        ]
        for kind, k in sorted(self.kinds.items()):
            files = [e["file"] for e in self.entries if e["kind"] == kind and "file" in e and "user" not in e]
            recs.append(
                DumpRecord(
                    f"{DIR}/{kind}",
                    [f"{DIR}/{f}" for f in files] or [f"{DIR}/{INDEX}"],
                    k["records"],
                    k["bytes"],
                    0.0,
                    PLUGIN,
                    {"backend": k["backend"], "databases": k["files"]},
                )
            )
        return recs


@hookimpl
def config_schema():
    return SCHEMA


@hookimpl
def dump(ctx, view, dump_dir, mailboxes):
    if not (ctx.config.get("databases") or {}).get("enabled", True):
        return []
    t0 = time.monotonic()
    dbtool.remove_stale_scratch(ctx.work_dir)
    job = Job(ctx, view, dump_dir)
    os.mkdir(job.top, 0o700)
    try:
        job.global_dbs()
        job.users(mailboxes)
    finally:
        job.cleanup()
    job.timing["all"] = time.monotonic() - t0
    return job.finish()


@hookimpl
def restore_dump(ctx, dump):
    return dbrestore.restore(ctx, dump)


@hookimpl
def restore_user_dump(ctx, dump, userid, user_dir):
    return dbrestore.restore(ctx, dump, only_user=userid, user_dir=user_dir)
