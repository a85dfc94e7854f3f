"""Backup-time consistency report: the mailbox list against the spool.

- mailboxes in the dump (`ctl_mboxlist -d`) whose directory is missing:
  their mail cannot be in the archive;
- uuid directories on a partition that no mailbox of the dump owns (left
  over by a crash, or created while a live backup ran): in the archive, but
  a restore only brings them back as mailboxes through `reconstruct -P`.

Both are counted and listed in manifest.json (`consistency`) and printed by
`before` as one warning line. The same pass counts every mailbox's message
count and bytes (read from its cyrus.index header: ~100 bytes per mailbox, so
the cost grows with mailboxes, not messages), which a restore drill checks.
"""

import logging
import os
from dataclasses import dataclass, field

from borg_cyrus.cyrus import storage, index, mboxlist
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.tools import progress

log = logging.getLogger(__name__)

LIST_LIMIT = 1000


def _uuid_dirs(root):
    base = os.path.join(root, "uuid")
    try:
        level1 = list(os.scandir(base))
    except OSError:
        return
    for a in level1:
        if not a.is_dir(follow_symlinks=False):
            continue
        for b in os.scandir(a.path):
            if not b.is_dir(follow_symlinks=False):
                continue
            for c in os.scandir(b.path):
                if c.is_dir(follow_symlinks=False):
                    yield c.name, c.path


@dataclass
class Report:
    """What the pass found: the manifest's `consistency`, per-mailbox counts
    (None when dumps.message_counts is off), totals for `counts`, and the
    problems a live backup may go on with."""

    report: dict
    per_mailbox: dict | None
    totals: dict
    problems: list = field(default_factory=list)


def report(ctx, view, mailboxes, counts=True):
    """One pass over the mailbox list: per-mailbox message counts and bytes
    from each cyrus.index header (counts=True) and the consistency report;
    log one warning line when something does not match. Mailbox directories
    the list does not name (a truncated or damaged mailboxes.db) fail the
    backup unless consistency.unlisted_mailboxes allows them."""
    boxes = [mb for mb in mailboxes if mb.has_spool]
    lay = storage.PathLayout.from_layout(ctx.layout)
    per = {} if counts else None
    totals = {"messages": 0, "bytes": 0, "unreadable": 0}
    problems = []
    without_dir = []
    damaged = {}
    for mb in progress.each("counts", boxes, "mailboxes"):
        try:
            d = storage.data_dir(lay, mb)
        except KeyError:
            without_dir.append(mb.intname)
            continue
        hdr, problem = index.inspect(view.read_path(os.path.join(storage.index_dir(lay, mb), "cyrus.index")))
        if problem:
            damaged[mb.intname] = problem
        if hdr is None and not problem and not os.path.isdir(view.read_path(d)):
            without_dir.append(mb.intname)
            continue
        if per is None:
            continue
        entry = {"uniqueid": mb.uniqueid, "partition": mb.partition}
        if mb.legacy:
            entry.update(layout="legacy", path=d)
        if hdr is not None:
            iv = totals.setdefault("index_versions", {})
            iv[hdr.minor_version] = iv.get(hdr.minor_version, 0) + 1
        if hdr is None:
            totals["unreadable"] += 1
        else:
            entry.update(messages=hdr.exists, bytes=hdr.quota_used, last_uid=hdr.last_uid, uidvalidity=hdr.uidvalidity)
            totals["messages"] += hdr.exists
            totals["bytes"] += hdr.quota_used
        if problem:
            entry["problem"] = problem
        per[mb.intname] = entry

    known = {mb.uniqueid for mb in boxes if not mb.legacy}
    orphans, unlisted = [], []
    for root in lay.roots():
        for name, path in _uuid_dirs(view.read_path(root)):
            if name not in known:
                orig = os.path.join(root, "uuid", name[0], name[1], name)
                orphans.append(orig)
                if os.path.lexists(os.path.join(path, "cyrus.header")):
                    unlisted.append(orig)
    orphans = sorted(set(orphans))
    unlisted = sorted(set(unlisted))

    live = getattr(view, "description", "live") == "live"
    rep = {
        "counts": {"mailboxes_without_directory": len(without_dir), "directories_without_mailbox": len(orphans)},
        "mailboxes_without_directory": sorted(without_dir)[:LIST_LIMIT],
        "directories_without_mailbox": orphans[:LIST_LIMIT],
        "unlisted_mailboxes": unlisted[:LIST_LIMIT],
        "damaged_indexes": dict(sorted(damaged.items())[:LIST_LIMIT]),
        "checked": {"mailboxes": len(boxes), "live": live},
    }
    if without_dir or orphans:
        parts = []
        if without_dir:
            parts.append(
                f"{len(without_dir)} mailbox(es) in the mailbox list without a directory "
                f"(e.g. {mboxlist.external_name(sorted(without_dir)[0])})"
            )
        if orphans:
            parts.append(f"{len(orphans)} directory(ies) without a mailbox entry (e.g. {orphans[0]})")
        log.warning(
            "consistency: %s; listed in manifest.json under consistency%s",
            ", ".join(parts),
            " (a live backup can race with changes)" if live else "",
        )
    if damaged:
        first = sorted(damaged)[0]
        log.warning(
            "%d mailbox(es) with a damaged or unreadable cyrus.index, e.g. %s: %s; run `reconstruct` on "
            "them (listed in manifest.json under consistency.damaged_indexes)",
            len(damaged),
            mboxlist.external_name(first),
            damaged[first],
        )
    if unlisted:
        msg = (
            f"the mailbox list names {len(boxes)} mailboxes, but the spool holds {len(unlisted)} more mailbox "
            f"director{'y' if len(unlisted) == 1 else 'ies'} with a cyrus.header that it does not list (e.g. "
            f"{unlisted[0]}): mailboxes.db looks damaged or truncated. Check it (ctl_mboxlist -d), rebuild the "
            "missing entries with `reconstruct -P` over those cyrus.header files"
        )
        if live and ctx.config["consistency"]["unlisted_mailboxes"] == "warn-in-live":
            log.warning("%s (consistency.unlisted_mailboxes: warn-in-live)", msg)
            problems.append(msg)
        else:
            raise BorgCyrusError(
                msg
                + ("; in mode live, consistency.unlisted_mailboxes: warn-in-live lets the backup go on" if live else "")
            )
    return Report(rep, per, totals, problems)
