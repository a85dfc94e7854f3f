"""`restore find --user USER [--mailbox M] [--since/--before DATE]
[--from/--subject/--header TEXT] [--archives-since DATE]`: the user's
messages that match, across archives, without extracting whole spools.

Per archive (oldest first): the dump directory (mailbox list, manifest),
then in one `borg extract` the cyrus.index of each of the user's mailboxes;
the records are narrowed by INTERNALDATE; the message files of the
candidates no earlier archive matched are extracted (a second call), and
only the first 64 KiB of each is read (the header, parsed once). A message (its GUID) seen in several
archives is listed once, with the first and last archive holding it and a
`restore messages` command that brings it back. Cost: two or three borg
calls per archive, O(archives x the user's mailboxes) index files; borg-cyrus's
own work is O(candidates) per archive (set lookups, no pairwise comparison).
"""

import datetime
import json
import logging
import os

from borg_cyrus.cyrus import index, storage
from borg_cyrus.cyrus.names import display, to_intname
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.restore.messages import HEADER_BYTES, day_start, header_match, parse_head, subject_of
from borg_cyrus.restore.session import ArchiveSession
from borg_cyrus.safety import trust

log = logging.getLogger(__name__)


def add_parser(rsub, parents):
    p = rsub.add_parser("find", parents=parents, help="a user's messages matching a search, across the archives")
    p.add_argument("--borgmatic-config", action="append", metavar="FILE", help="as for the other restore verbs")
    p.add_argument("--repository", help="repository path or label, when borgmatic's configuration lists several")
    p.add_argument("--user", required=True, help="whose mailboxes")
    p.add_argument("--mailbox", help="only this folder (admin namespace, e.g. user/bob/Sent)")
    p.add_argument("--since", metavar="DATE", help="INTERNALDATE on or after DATE")
    p.add_argument("--before", metavar="DATE", help="INTERNALDATE before DATE")
    p.add_argument("--from", dest="froms", action="append", default=[], metavar="TEXT")
    p.add_argument("--subject", action="append", default=[], metavar="TEXT")
    p.add_argument("--header", action="append", default=[], metavar="'NAME: TEXT'")
    p.add_argument("--archives-since", metavar="DATE", help="only archives made on or after DATE")
    p.add_argument("--json", action="store_true")


def _search_archive(ctx, args, repo, reader, name, lo, hi, found):
    with ArchiveSession(ctx, archive=name, repo=repo, shared=reader) as s:
        s.load_dump()
        want = to_intname(args.mailbox) if args.mailbox else None
        boxes = [mb for mb in s.dump.mailboxes if mb.has_spool and mb.userid == args.user]
        boxes = [mb for mb in boxes if want is None or mb.intname == want]
        s.extract(sorted(index_path(s.layout, mb) for mb in boxes))
        fresh = new_candidates(candidates(s.layout, boxes, s.staged, name, lo, hi), found, name)
        if fresh:  # only the new candidates' files, for their headers
            s.extract(sorted({f for _mb, _r, f in fresh}))
        match(fresh, s.staged, name, args.froms, args.subject, args.header, found)


def index_path(layout, mb):
    return os.path.join(storage.index_dir(layout, mb), "cyrus.index")


def candidates(layout, boxes, staged, archive, lo, hi):
    """[(mailbox, record, message file)] of the live records of the boxes' staged cyrus.index files whose
    INTERNALDATE is in [lo, hi); records no Cyrus writes are left out, one line each."""
    cands = []
    for mb in boxes:
        try:
            ix = index.read(staged(index_path(layout, mb)))
        except (OSError, ValueError):
            continue
        if not ix.detailed:
            continue
        dirs = storage.mailbox_dirs(layout, mb)
        records, bad = index.vet(ix.live())
        for uid, why in bad:
            log.warning("archive %s: %s UID %d: %s; not listed (its index record is forged or damaged)",
                        archive, display(mb.intname), uid, why)  # fmt: skip
        for r in records:
            if (lo is not None and r.internaldate < lo) or (hi is not None and r.internaldate >= hi):
                continue
            f = os.path.join(dirs["archive"] if r.archived and "archive" in dirs else dirs["data"], f"{r.uid}.")
            cands.append((mb, r, f))
    return cands


def new_candidates(cands, found, archive):
    """The candidates whose message (GUID) no earlier archive matched, each GUID once; a GUID that matched
    before gets this archive as its last. Set and dict lookups: O(candidates)."""
    fresh, seen = [], set()
    for mb, r, f in cands:
        if r.guid in found:  # the same message in an earlier archive: it matched there
            found[r.guid]["last"] = archive
        elif r.guid not in seen:
            seen.add(r.guid)
            fresh.append((mb, r, f))
    return fresh


def match(fresh, staged, archive, froms, subjects, headers, found):
    """Read the header of each fresh candidate's staged file; the ones that match go into found (by GUID).
    A file of another size than its record is not the message the index describes: left out."""
    for mb, r, f in fresh:
        try:
            with open(staged(f), "rb") as fh:
                why = index.file_problem(r, os.fstat(fh.fileno()).st_size)
                head = fh.read(HEADER_BYTES)
        except OSError:
            continue
        if why:
            log.warning("archive %s: %s UID %d: %s; not listed (its index record is forged or damaged)",
                        archive, display(mb.intname), r.uid, why)  # fmt: skip
            continue
        head = parse_head(head)
        if not header_match(head, froms, subjects, headers):
            continue
        found[r.guid] = {
            "mailbox": display(mb.intname),
            "uid": r.uid,
            "internaldate": datetime.datetime.fromtimestamp(r.internaldate).strftime("%Y-%m-%d %H:%M"),
            "bytes": r.size,
            "subject": subject_of(head),
            "guid": r.guid.hex(),
            "first": archive,
            "last": archive,
        }


def run(ctx, args, out=print):
    trust.check_userid(args.user)
    lo = day_start(args.since) if args.since else None
    hi = day_start(args.before) if args.before else None
    for h in args.header:
        if ":" not in h:
            raise BorgCyrusError(f"--header {h!r}: give it as 'Name: text'")
    from borg_cyrus.restore import archive as archive_mod, when

    repo = archive_mod.open_repository(args.borgmatic_config, args.repository, ctx.runner)
    archives = repo.archive_times()
    if args.archives_since:
        start = when.parse_at(args.archives_since)
        if start.time() == datetime.time(23, 59, 59, 999999):
            start = datetime.datetime.combine(start.date(), datetime.time())
        archives = [(n, t) for n, t in archives if t is None or t >= start]
    if not archives:
        raise BorgCyrusError(f"repository {repo} has no archives to search")
    found = {}
    reader = repo.reader(archives[0][0])  # one borg process for every archive (None: borg's command line)
    try:
        for name, _t in archives:
            _search_archive(ctx, args, repo, reader, name, lo, hi, found)
    finally:
        if reader is not None:
            reader.close()
    hits = sorted(found.values(), key=lambda h: (h["mailbox"], h["internaldate"], h["uid"]))
    if args.json:
        out(json.dumps({"archives": len(archives), "messages": hits}, indent=2, ensure_ascii=False))
        return 0
    out(f"{len(hits)} message(s) of {args.user} in {len(archives)} archive(s)")
    for h in hits:
        out(
            f"  {h['mailbox']:28} UID {h['uid']:<6} {h['internaldate']}  {h['bytes']:>8} B  {h['subject']}\n"
            f"    in {h['first']}" + (f" .. {h['last']}" if h["last"] != h["first"] else "")
            + f"; back with: borg-cyrus restore messages '{h['mailbox']}' --archive {h['last']} --uid {h['uid']}"
        )  # fmt: skip
    return 0 if hits else 1
