"""A restore onto a newer Cyrus series than the archive's (3.6 -> 3.10):
what Cyrus's upgrade notes ask, done after the files are in place, and said.

- mailboxes.db and the other databases: `ctl_cyrusdb -r`, which every
  full restore runs, upgrades them in place (the notes: "at startup, or when
  you first run the updated ctl_cyrusdb -r manually"); databases the new
  Cyrus cannot read, or of another backend, were rebuilt from their text
  dumps before (backup/dbrestore.py).
- Each restored mailbox's cyrus.index: `reconstruct -V max` rewrites it in
  the newest version this Cyrus knows (v17 of 3.6 -> v19 of 3.10); Cyrus
  would read the old one, but the notes recommend the upgrade, and a restore
  is the time for it. UIDs, UIDVALIDITY, flags and INTERNALDATE are kept.
- Conversations, when this server's imapd.conf enables them:
  `ctl_conversationsdb -b` rebuilds them from the restored mailboxes.

An older target than the archive is refused before anything is touched
(restore/dump.check_cyrus_version).
"""

import logging
import os

from borg_cyrus.cyrus import index, mboxlist, storage

log = logging.getLogger(__name__)

BATCH = 200  # mailbox names per reconstruct call


def tops(intnames):
    """The names no other name of the list is an ancestor of (reconstruct -r takes the rest)."""
    names = sorted(set(intnames))
    out = []
    for n in names:
        if out and n.startswith(out[-1] + "."):
            continue
        out.append(n)
    return out


def index_versions(lay, mailboxes):
    """{minor version: mailboxes} of the cyrus.index files in place."""
    found = {}
    for mb in mailboxes:
        try:
            hdr, _problem = index.inspect(os.path.join(storage.index_dir(lay, mb), "cyrus.index"))
        except OSError:
            hdr = None
        key = hdr.minor_version if hdr else "unreadable"
        found[key] = found.get(key, 0) + 1
    return found


def _versions(found):
    return ", ".join(f"v{v}: {n}" for v, n in sorted(found.items(), key=str)) or "none"


def upgrade_mailboxes(ctx, upgrade, mailboxes, tool, users=()):
    """`reconstruct -V max` on mailboxes (mboxlist.Mailbox, in place on this
    server) and `ctl_conversationsdb -b` for users when conversations are on.
    tool(name, *args): runs and records a Cyrus tool. Returns report lines."""
    lay = storage.PathLayout.from_layout(ctx.layout)
    boxes = [mb for mb in mailboxes if mb.has_spool]
    out = [f"restoring onto a newer Cyrus: {upgrade}"]
    if not boxes:
        return out
    seen = index_versions(lay, boxes) if not ctx.dry_run else {}
    names = [mboxlist.admin_name(n, ctx.layout.unixhierarchysep) for n in tops(mb.intname for mb in boxes)]
    for i in range(0, len(names), BATCH):
        tool("reconstruct", "-r", "-V", "max", "--", *names[i : i + BATCH])
    if not ctx.dry_run:
        now = index_versions(lay, boxes)
        out.append(f"reconstruct -V max: cyrus.index of {len(boxes)} mailbox(es) {_versions(seen)} -> {_versions(now)}")
    if ctx.layout.conf.switch("conversations"):
        for user in sorted(set(users)):
            tool("ctl_conversationsdb", "-b", "--", user)
        out.append(f"ctl_conversationsdb -b: conversations rebuilt for {len(set(users))} user(s)")
    return out
