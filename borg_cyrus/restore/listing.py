"""`restore list`: the users, mailboxes, counts and sizes of an archive, read
from its mailbox list and manifest (only the dump directory is extracted)."""

import json

from borg_cyrus.cyrus.names import display
from borg_cyrus.errors import BorgCyrusError


def human_size(n):
    n = int(n or 0)
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024.0
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"


def archive_summary(session):
    """A JSON-able description of the archive's users and mailboxes."""
    dump, m = session.dump, session.dump.manifest
    counts = m.get("mailboxes") or {}
    excluded = set(m.get("excluded_mailboxes") or [])
    boxes = []
    for mb in dump.mailboxes:
        if not mb.has_spool:
            continue
        c = counts.get(mb.intname) or {}
        boxes.append(
            {
                "name": display(mb.intname),
                "intname": mb.intname,
                "user": mb.userid,
                "partition": mb.partition,
                "layout": "legacy" if mb.legacy else "uuid",
                "uniqueid": mb.uniqueid,
                "messages": c.get("messages"),
                "bytes": c.get("bytes"),
                "excluded": mb.intname in excluded,
                "deleted": mb.parts[0] == "DELETED" if mb.parts else False,
            }
        )
    users = {}
    for b in boxes:
        key = b["user"] or ("(deleted)" if b["deleted"] else "(shared)")
        u = users.setdefault(key, {"mailboxes": 0, "messages": 0, "bytes": 0, "uncounted": 0})
        u["mailboxes"] += 1
        if b["messages"] is None:
            u["uncounted"] += 1
        else:
            u["messages"] += b["messages"]
            u["bytes"] += b["bytes"] or 0
    return {
        "archive": session.archive,
        "repository": str(session.repo),
        "created": m.get("created"),
        "hostname": m.get("hostname"),
        "cyrus_version": m.get("cyrus_version"),
        "backends": backends(m.get("layout") or {}),
        "installed": m.get("installed"),
        "index_versions": (m.get("counts") or {}).get("index_versions"),
        "mode": m.get("mode"),
        "counts": m.get("counts"),
        "consistency": (m.get("consistency") or {}).get("counts"),
        "users": users,
        "mailboxes": boxes,
    }


def backends(layout_json):
    """{database: backend} of an archived (or live) layout."""
    return {k: (v or {}).get("backend") for k, v in (layout_json.get("databases") or {}).items() if isinstance(v, dict)}


def format_list(summary, user=None):
    s = summary
    out = [
        f"archive {s['archive']} in {s['repository']}",
        f"  made {s.get('created') or '?'} on {s.get('hostname') or '?'}, {s.get('cyrus_version') or 'Cyrus ?'}, "
        f"mode {s.get('mode') or '?'}",
    ]
    if s.get("backends"):
        out.append("  databases: " + ", ".join(f"{k} {v}" for k, v in sorted(s["backends"].items())))
    inst = s.get("installed")
    if isinstance(inst, dict):
        pkgs = ", ".join(
            f"{p.get('name')} {p.get('version')}" for p in inst.get("packages") or [] if isinstance(p, dict)
        )
        out.append(
            f"  installed Cyrus: {pkgs or 'no package found'}; {inst.get('files', 0)} files"
            + (
                " (archived: `borg extract` them on a binary-compatible host)"
                if inst.get("files_archived")
                else " (listed in installed/files.txt, not archived)"
            )
        )
    if s.get("index_versions"):
        out.append(
            "  cyrus.index versions: "
            + ", ".join(f"{v} ({n} mailboxes)" for v, n in sorted(s["index_versions"].items()))
        )
    boxes = [b for b in s["mailboxes"] if user is None or b["user"] == user]
    users = {k: v for k, v in s["users"].items() if user is None or k == user}
    if user is not None and not boxes:
        raise BorgCyrusError(
            f"user {user} has no mailboxes in archive {s['archive']}; run `borg-cyrus restore list` to see who has"
        )
    tot_m = sum(v["messages"] for v in users.values())
    tot_b = sum(v["bytes"] for v in users.values())
    real_users = [k for k in users if not k.startswith("(")]
    out.append(f"  {len(boxes)} mailboxes, {len(real_users)} users, {tot_m} messages, {human_size(tot_b)}")
    cons = s.get("consistency") or {}
    if any(cons.values()):
        out.append(
            f"  consistency at backup time: {cons.get('mailboxes_without_directory', 0)} mailbox(es) "
            f"without a directory, {cons.get('directories_without_mailbox', 0)} directory(ies) without "
            "a mailbox"
        )
    out.append("")
    w = max([len("USER")] + [len(k) for k in users])
    out.append(f"{'USER':<{w}}  {'MAILBOXES':>9}  {'MESSAGES':>8}  {'SIZE':>10}")
    for k in sorted(users, key=lambda k: (k.startswith("("), k)):
        v = users[k]
        msgs = f"{v['messages']}" + ("+?" if v["uncounted"] else "")
        out.append(f"{k:<{w}}  {v['mailboxes']:>9}  {msgs:>8}  {human_size(v['bytes']):>10}")
    out.append("")
    w = max([len("MAILBOX")] + [len(b["name"]) for b in boxes])
    out.append(f"{'MAILBOX':<{w}}  {'MESSAGES':>8}  {'SIZE':>10}  {'PARTITION':<9}  {'LAYOUT':<6}  NOTE")
    for b in sorted(boxes, key=lambda b: b["name"]):
        note = []
        if b["excluded"]:
            note.append("messages excluded from backups")
        if b["deleted"]:
            note.append("deleted (delayed delete)")
        msgs = "?" if b["messages"] is None else str(b["messages"])
        size = "?" if b["bytes"] is None else human_size(b["bytes"])
        out.append(
            f"{b['name']:<{w}}  {msgs:>8}  {size:>10}  {b['partition']:<9}  {b['layout']:<6}  "
            f"{'; '.join(note)}".rstrip()
        )
    return "\n".join(out) + "\n"


def summary_json(summary):
    return json.dumps(summary, indent=1, sort_keys=True, ensure_ascii=False)
