"""manifest.json: what an archive holds, in one place.

Built by `build` from what the run's steps returned: the view, the mailbox
list, every dump record (and the manifest sections a dump contributes, e.g.
`cyrus_version`), the consistency report and counts, the excludes, the
problems, the timings. Restores and `verify` read it back (restore/dump.py).

Top-level keys: format, borg_cyrus_version, created, hostname, mode, view,
blocked_seconds, imapd_conf, work_directory, layout, parents, dumps,
timings, problems, excluded_mailboxes, counts, mailboxes (per-mailbox
counts), consistency, and the sections of dumps (cyrus_version).
"""

import datetime
import grp
import json
import os
import pwd
import socket
import stat

from borg_cyrus import __version__
from borg_cyrus import state as state_mod
from borg_cyrus.errors import BorgCyrusError


def parent_dirs(lay):
    """Owner and mode of every directory above Cyrus's locations, so a full
    restore can give the ones `borg extract` creates (root 0700) their own back."""
    out = {}
    for _key, loc in lay.data_locations():
        p = os.path.dirname(loc)
        while p not in ("", "/") and p not in out:
            try:
                st = os.stat(p)
            except OSError:
                break
            out[p] = {
                "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "user": _name(pwd.getpwuid, st.st_uid),
                "group": _name(grp.getgrgid, st.st_gid),
            }
            p = os.path.dirname(p)
    return out


def _name(lookup, num):
    try:
        return lookup(num)[0]
    except KeyError:
        return None


def build(ctx, view, mailbox_list, records, consistency, excludes, problems, timings, dumps_only=False):
    """The manifest dict. consistency: backup.consistency.Report. dumps_only:
    a database-only backup (no spool in the archive)."""
    boxes = mailbox_list.mailboxes
    m = {
        "format": 1,
        "borg_cyrus_version": __version__,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "mode": "dumps-only" if dumps_only else ctx.config["mode"],
        "view": view.description,
        "blocked_seconds": view.blocked_seconds,
        "imapd_conf": ctx.layout.imapd_conf,
        "work_directory": ctx.work_dir,
        "layout": ctx.layout.to_json(),
        "parents": parent_dirs(ctx.layout),
        "dumps": [r.to_json() for r in [mailbox_list.record, *records]],
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "problems": list(problems),
        "excluded_mailboxes": sorted({e.mailbox for e in excludes if e.mailbox}),
        "consistency": consistency.report,
        "counts": dict(
            consistency.totals,
            mailboxes=len(boxes),
            users=len({mb.userid for mb in boxes if mb.userid and mb.has_spool}),
        ),
    }
    if consistency.per_mailbox is not None:
        m["mailboxes"] = consistency.per_mailbox
    for r in [mailbox_list.record, *records]:
        for key, value in r.manifest.items():
            if key in m:
                raise BorgCyrusError(
                    f"dump {r.name} of plugin {r.plugin or '?'} sets manifest key '{key}', "
                    "which is taken; rename it in the plugin"
                )
            m[key] = value
    return m


def write(dump_dir, manifest):
    # compact: at 100k mailboxes an indented, sorted dump costs seconds
    state_mod.write_atomic(os.path.join(dump_dir, "manifest.json"), json.dumps(manifest, separators=(",", ":")) + "\n")
