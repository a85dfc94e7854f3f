"""`restore history MAILBOX | --user USER`: across the archives, when a
mailbox existed, its message count and size, and when it was renamed or
vanished.

Only each archive's manifest.json is extracted (one borg process reads it
from every archive, each walk ending at the dump, which comes first; into a
private directory): it lists every mailbox with its
uniqueid and the counts read from cyrus.index at backup time. A mailbox is
followed by its uniqueid, which Cyrus keeps across RENAME, so a renamed
folder stays one line of history; under `delete_mode: delayed` a deleted
folder shows as `DELETED/...` until it is purged. Cost: a few item chunks
per archive (O(archives)), nothing of the spool.
"""

import datetime
import json
import logging
import os
import shutil
import tempfile

from borg_cyrus.cyrus.names import display, to_intname
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.restore.listing import human_size
from borg_cyrus.safety import safeio, trust

log = logging.getLogger(__name__)
MANIFEST_LIMIT = 512 << 20


def add_parser(rsub, parents):
    rh = rsub.add_parser(
        "history", parents=parents, help="across the archives: when a mailbox existed, its counts, renames"
    )
    rh.add_argument("mailbox", metavar="MAILBOX", nargs="?", help="admin namespace, e.g. 'user/bob/Archive 2019'")
    rh.add_argument("--user", help="every mailbox of this user instead")
    rh.add_argument("--json", action="store_true")


def read_manifest(ctx, repo, archive, tmp_parent, reader=None):
    """The archive's manifest (a dict), or None if it holds none."""
    path = os.path.join(ctx.dump_dir, "manifest.json")
    d = tempfile.mkdtemp(prefix="history-", dir=tmp_parent)
    try:
        missing = reader.extract([path], d, archive=archive) if reader else repo.extract(archive, [path], d)
        if missing:
            return None
        staged = os.path.join(d, path.lstrip("/"))
        data = json.loads(safeio.read_bytes(staged, limit=MANIFEST_LIMIT))
        return data if isinstance(data, dict) else None
    except ValueError:
        log.warning("archive %s: its manifest.json is not JSON; skipped", archive)
        return None
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _is_deleted(intname):
    local = intname.split("!", 1)[-1]
    return local.startswith("DELETED.")


def _owned_by(intname, user):
    local = intname.split("!", 1)[-1]
    if local.startswith("DELETED."):
        local = local[len("DELETED.") :]
    return local == f"user.{user}" or local.startswith(f"user.{user}.")


def timelines(snapshots, mailbox=None, user=None):
    """snapshots: [(archive, time, {intname: entry})], oldest first.
    {uniqueid: [(archive, time, intname or None, entry or None, note)]} for
    the mailboxes that ever had the given name (or belonged to the user)."""
    want = to_intname(mailbox) if mailbox else None
    ids = {}
    for _a, _t, boxes in snapshots:
        for intname, e in boxes.items():
            u = e.get("uniqueid")
            if not u or not isinstance(u, str):  # the manifest is untrusted
                continue
            if (want and intname == want) or (user and _owned_by(intname, user)):
                ids.setdefault(u, None)
    # per archive, uniqueid -> (name, entry) of its first mailbox: one pass over each archive's list
    by_id = []
    for archive, t, boxes in snapshots:
        m = {}
        for n, e in boxes.items():
            u = e.get("uniqueid")
            if isinstance(u, str) and u in ids and u not in m:
                m[u] = (n, e)
        by_id.append((archive, t, m))
    out = {}
    for u in ids:
        line, prev = [], None
        for archive, t, m in by_id:
            hit = m.get(u)
            if hit is None:
                if prev is not None:
                    line.append((archive, t, None, None, "gone (deleted or purged)"))
                prev = None
                continue
            name, e = hit
            if prev is None:
                note = "first seen" if not line else "back"
            elif name != prev:
                note = "deleted (delayed)" if _is_deleted(name) else f"renamed from {display(prev)}"
            else:
                note = ""
            line.append((archive, t, name, e, note))
            prev = name
        out[u] = line
    return out


def run(ctx, repo, mailbox=None, user=None, as_json=False, out=print):
    if not mailbox and not user:
        raise BorgCyrusError("restore history: name a MAILBOX or give --user USER")
    if user:
        trust.check_userid(user)
    archives = repo.archive_times()
    if not archives:
        raise BorgCyrusError(f"repository {repo} has no archives")
    parent = os.path.join(ctx.work_dir, "staging")
    os.makedirs(parent, 0o700, exist_ok=True)
    snapshots = []
    reader = repo.reader(archives[0][0])  # one borg process for every archive (None: borg's command line)
    try:
        for name, t in archives:
            m = read_manifest(ctx, repo, name, parent, reader)
            boxes = (m or {}).get("mailboxes") or {}
            snapshots.append((name, t, {k: v for k, v in boxes.items() if isinstance(v, dict)}))
    finally:
        if reader is not None:
            reader.close()
    lines = timelines(snapshots, mailbox, user)
    if as_json:
        data = {
            u: [
                {
                    "archive": a,
                    "time": t.isoformat() if t else None,
                    "mailbox": display(n) if n else None,
                    "messages": (e or {}).get("messages"),
                    "bytes": (e or {}).get("bytes"),
                    "note": note,
                }
                for a, t, n, e, note in line
            ]
            for u, line in lines.items()
        }
        out(json.dumps({"archives": len(archives), "mailboxes": data}, indent=2, ensure_ascii=False))
        return 0
    what = f"user {user}" if user else display(to_intname(mailbox))
    if not lines:
        out(f"{what}: in none of the {len(archives)} archives")
        return 1
    out(f"{what}: {len(lines)} mailbox(es) across {len(archives)} archives")
    for u, line in sorted(lines.items(), key=lambda kv: kv[1][0][1] or datetime.datetime.min):
        out(f"\nuniqueid {u}")
        out(f"  {'ARCHIVE':40} {'TIME':19} {'MAILBOX':30} {'MESSAGES':>8} {'SIZE':>10}  NOTE")
        for a, t, n, e, note in line:
            when = t.strftime("%Y-%m-%d %H:%M:%S") if t else "?"
            msgs = "" if e is None or e.get("messages") is None else str(e["messages"])
            size = "" if e is None or e.get("bytes") is None else human_size(e["bytes"])
            out(f"  {a:40} {when:19} {display(n) if n else '-':30} {msgs:>8} {size:>10}  {note}")
    return 0
