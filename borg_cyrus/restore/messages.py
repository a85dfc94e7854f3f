"""`restore messages MAILBOX`: single messages of one archived folder, chosen
by UID, INTERNALDATE, GUID, header text or "expunged since", into a new
folder of the running server (default `<owner>/Restored/<archive date>/<folder>`,
or `--into FOLDER`), or back into the live folder itself with new UIDs
(`--in-place`: IMAP APPEND as the owner, cyrus/imapadmin.py).

How: the archived folder's cyrus.index (and cyrus.header) is extracted
first and read; the selectors that need no message text (UIDs, dates, GUID,
expunged) narrow the records; only the candidates' message files are then
extracted, and `--from/--subject/--header` read their headers. The new
folder is made from the archived index plus exactly the chosen files (a new
uniqueid, as `restore mailbox --into` does); the records of the others are
marked expunged in the staged index first, and `reconstruct` keeps flags,
INTERNALDATE and UIDs of the chosen ones. A message the live folder already
holds is never restored twice: by GUID, and after extraction by content in
every form an APPEND can have given it (line ends made CRLF, 8-bit header
bytes munged: cyrus/imapadmin.py). Index records no Cyrus writes (UID 0, a
UID twice) and records that do not describe their file (size, SHA-1) are
left out, one line each. `--expunged` takes the archived messages the
live folder no longer has, plus, under `expunge_mode: delayed`, the records
the archived index marks expunged whose files were still there: their
expunged flag is cleared in the staged copy of the index (record CRCs
recomputed) before the folder is made. In place, each chosen message is
appended with the archived flags (less \\Deleted for the expunged ones) and
INTERNALDATE; a run stopped half-way is finished by running it again (the
ones back already are then "already in the live folder").
"""

import datetime
import email.parser
import email.policy
import os
import time

from borg_cyrus.cyrus import header, imapadmin, index, storage
from borg_cyrus import faults
from borg_cyrus.cyrus.names import display, to_intname
from borg_cyrus.errors import BorgCyrusError, ConfigError
from borg_cyrus.restore import when
from borg_cyrus.restore.plan import PartialRestore, quota_roots
from borg_cyrus.safety import trust

HEADER_BYTES = 64 * 1024  # enough of a message to read its header block


def parse_uids(text):
    """'1:5,7,10:*' -> a predicate on UIDs."""
    ranges = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition(":")
        try:
            a = int(lo)
            b = (None if hi == "*" else int(hi)) if hi else a
        except ValueError:
            raise ConfigError(f"--uid {text!r}: give UIDs like 1:5,7,10:*") from None
        ranges.append((a, b))
    if not ranges:
        raise ConfigError(f"--uid {text!r}: give UIDs like 1:5,7,10:*")
    return lambda uid: any(a <= uid and (b is None or uid <= b) for a, b in ranges)


def day_start(text):
    """--since/--before DATE as seconds since the epoch (local midnight of a day, or the moment given)."""
    t = when.parse_at(text)
    if t.time() == datetime.time(23, 59, 59, 999999):  # a bare day: its start
        t = datetime.datetime.combine(t.date(), datetime.time())
    return t.timestamp()


def _text(value):
    """A header value as text: RFC 2047 decoded, raw 8-bit bytes read as UTF-8."""
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def parse_head(data):
    """The header of a message's first bytes (parsed once for header_match and subject_of)."""
    return email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(data)


def header_match(data, froms, subjects, headers):
    """data: a message's first bytes, or parse_head of them."""
    msg = parse_head(data) if isinstance(data, bytes) else data

    def has(name, needle):
        return any(needle.lower() in _text(v).lower() for v in msg.get_all(name) or [])

    if any(not has("From", f) for f in froms) or any(not has("Subject", s) for s in subjects):
        return False
    for h in headers:
        name, sep, needle = h.partition(":")
        if not sep:
            raise ConfigError(f"--header {h!r}: give it as 'Name: text'")
        if not has(name.strip(), needle.strip()):
            return False
    return True


def subject_of(data):
    msg = parse_head(data) if isinstance(data, bytes) else data
    text = " ".join(_text(msg.get("Subject", "")).split())[:70]
    return "".join(c if c.isprintable() else "?" for c in text)  # the archive's text, not the terminal's


def restage_index(path, keep, revived):
    """Rewrite a staged cyrus.index for the new folder (record CRCs kept right): the records of `revived`
    lose their expunged and \\Deleted flags (back as before the user deleted them, like `unexpunge -d`);
    every record not in `keep` is marked expunged and unlinked, its file not brought back. So `reconstruct`
    has no missing file to account for: with `conversations: yes` it would read each one's message."""
    gone = index.FLAG_EXPUNGED | index.FLAG_UNLINKED

    def change(uid, flags):
        new = flags & ~(index.FLAG_EXPUNGED | index.FLAG_DELETED) if uid in revived else flags
        return new if uid in keep else new | gone

    index.rewrite_flags(path, change)


class MessagesRestore(PartialRestore):
    def run(self, name, into=None, uids=None, since=None, before=None, froms=(), subjects=(), headers=(),
            guids=(), expunged=False, in_place=False):  # fmt: skip
        t0 = time.monotonic()
        # bad selectors first: one line, nothing read or changed
        if in_place and into:
            raise ConfigError("--in-place and --into: give one (in place means into the archived folder itself)")
        if into:
            trust.check_target_name(into)
        imap = imapadmin.settings(self.ctx.config) if in_place else None
        pick_uid = parse_uids(uids) if uids else None
        lo, hi = (day_start(since) if since else None), (day_start(before) if before else None)
        for h in headers:
            if ":" not in h:
                raise ConfigError(f"--header {h!r}: give it as 'Name: text'")
        self.check_version()
        self.load_live()
        src = self.source(name)
        live = self.live_box(src.intname) or next((m for m in self.live.values() if m.uniqueid == src.uniqueid), None)
        if in_place:
            if live is None:
                raise BorgCyrusError(
                    f"{display(src.intname)} is not on the server now; bring it back with `restore mailbox`, or "
                    "leave out --in-place (a new folder)"
                )
            target, plan = live.intname, None
        else:
            target = to_intname(into) if into else self.default_target(src)
            if self.live_box(target) is not None:
                raise BorgCyrusError(f"{display(target)} exists; restore into a new folder with --into")
            plan = self.plan_all([(src, target)], into=True)[0]
        a_idx = os.path.join(storage.index_dir(self.alay, src), "cyrus.index")
        a_hdr = os.path.join(storage.header_dir(self.alay, src), "cyrus.header")
        self.fetch([a_idx, a_hdr], [a_idx, a_hdr])
        try:
            ix = index.read(self.s.staged(a_idx))
        except (OSError, ValueError) as e:
            raise BorgCyrusError(f"the archived cyrus.index of {display(src.intname)} cannot be read: {e}") from None
        if not ix.detailed:
            raise BorgCyrusError(f"{display(src.intname)}: cyrus.index version {ix.minor_version} is not read here")
        live_ix = self.live_index(live) if live is not None else None
        present = {r.guid for r in live_ix.live()} if live_ix else set()
        want_guids = {g.lower() for g in guids}
        chosen, revived, dup = [], set(), 0
        records, bad = index.vet(r for r in ix.records if not index.unlinked(r))
        for uid, why in bad:
            self.skip_record(src.intname, uid, why)
        for r in records:
            if r.expunged and not expunged:
                continue
            if pick_uid and not pick_uid(r.uid):
                continue
            if (lo is not None and r.internaldate < lo) or (hi is not None and r.internaldate >= hi):
                continue
            if want_guids and r.guid.hex() not in want_guids:
                continue
            if r.guid in present:
                dup += 1
                continue
            if r.expunged:
                revived.add(r.uid)
            chosen.append(r)
        srcs = storage.mailbox_dirs(self.alay, src)

        def file_of(r):
            return os.path.join(srcs["archive"] if r.archived and "archive" in srcs else srcs["data"], f"{r.uid}.")

        files = [file_of(r) for r in chosen]
        missing = self.fetch(files, []) if files else set()
        chosen = [r for r in chosen if file_of(r) not in missing]
        subjects_seen = {}
        if froms or subjects or headers or self.ctx.dry_run:
            kept = []
            for r in chosen:
                with open(self.s.staged(file_of(r)), "rb") as f:
                    head = f.read(HEADER_BYTES)
                subjects_seen[r.uid] = subject_of(head)
                if header_match(head, froms, subjects, headers):
                    kept.append(r)
                else:
                    os.unlink(self.s.staged(file_of(r)))
            chosen = kept
        chosen, same = self.check_files(src, chosen, lambda r: self.s.staged(file_of(r)), present)
        dup += same
        self.say(
            "restore messages of %s from archive %s into %s: %d chosen (%d expunged in the archive), %d already "
            "in the live folder (same content), %d not in the archive",
            display(src.intname),
            self.s.archive,
            display(target),
            len(chosen),
            len(revived & {r.uid for r in chosen}),
            dup,
            len(missing),
        )
        for r in chosen[:200] if self.ctx.dry_run else ():
            when_ = datetime.datetime.fromtimestamp(r.internaldate).strftime("%Y-%m-%d %H:%M")
            self.say("  UID %-6d %s %8d bytes  %s", r.uid, when_, r.size, subjects_seen.get(r.uid, ""))
        if not chosen:
            self.say("nothing to restore")
            return self.steps
        if in_place:
            flag_names = header.read(self.s.staged(a_hdr)).get("U") or []
            self.append_in_place(imap, live, chosen, lambda r: self.s.staged(file_of(r)), flag_names, revived)
            self.derived_for([self.admin(live.intname)], [])  # conversations: imapd kept them on APPEND
            self.finish_log(t0, f"restore messages of {display(src.intname)} in place")
            return self.steps
        if self.ctx.dry_run:
            self.say("would create %s with these message(s), then reconstruct it", display(target))
            return self.steps
        restage_index(self.s.staged(a_idx), {r.uid for r in chosen}, revived)
        for n in ("cyrus.cache",):  # rebuilt by reconstruct
            p = os.path.join(self.s.staged(os.path.dirname(a_idx)), n)
            if os.path.exists(p):
                os.unlink(p)
        self.apply([plan], [])
        self.tool("reconstruct", "--", self.admin(target))
        self.upgrade_restored([plan])
        self.derived([plan])
        for root in quota_roots([plan]):
            self.tool("quota", "-f", "--", self.admin(root))
        self.finish_log(t0, f"restore messages of {display(src.intname)}")
        return self.steps

    def check_files(self, src, chosen, path_of, present):
        """(the chosen records whose staged file is the message they describe and not in the live folder
        yet, how many are there already). The size is compared before anything is read (a record of 55
        bytes beside a file of 1 GiB reads nothing of it), then the content's SHA-1 with the GUID; a
        message is already there when the live folder holds it in any form it can have after an APPEND
        (imapadmin.content_keys: line ends made CRLF, the header's 8-bit bytes munged)."""
        kept, same = [], 0
        for r in chosen:
            p = path_of(r)
            why = index.file_problem(r, os.lstat(p).st_size)
            data = None
            if why is None:
                with open(p, "rb") as f:
                    data = f.read()
                why = index.file_problem(r, len(data), data)
            if why is not None:
                self.skip_record(src.intname, r.uid, why)
                os.unlink(p)
            elif imapadmin.content_keys(data) & present:
                same += 1
                os.unlink(p)
            else:
                kept.append(r)
        return kept, same

    def append_in_place(self, imap, live, chosen, path_of, flag_names, revived):
        """APPEND each chosen message to the live folder (as its owner), archived flags and INTERNALDATE kept."""
        conn = imapadmin.Admin(imap, authz=live.userid, timeout=self.ctx.config["tool_timeout"])
        try:
            name = conn.find(live.uniqueid, top=None if live.userid else live.parts[0])
            if name is None:
                raise BorgCyrusError(
                    f"{conn.where}: {live.userid or imap['admin']} sees no folder with MAILBOXID {live.uniqueid} "
                    f"({display(live.intname)}); for a shared folder grant {imap['admin']} the l and i rights"
                )
            rights = conn.rights(name)
            if "i" not in rights:
                raise BorgCyrusError(
                    f"{conn.where}: no right to insert into {display(live.intname)} (rights: {rights})"
                )
            lacking = [f for f, r in (("keywords", "w"), ("\\Seen", "s"), ("\\Deleted", "t")) if r not in rights]
            if lacking:
                self.say("without the %s right(s) on %s, Cyrus drops %s", "".join(r for r in "wst" if r not in rights),
                         display(live.intname), ", ".join(lacking))  # fmt: skip
            who = f"as {live.userid}" if live.userid else f"as {imap['admin']}"
            if self.ctx.dry_run:
                self.say("would append %d message(s) to %s (%s, through %s), with new UIDs", len(chosen),
                         display(live.intname), who, conn.where)  # fmt: skip
                return
            uids = []
            for i, r in enumerate(chosen):
                flags, bad = imapadmin.flags_of(r, flag_names, drop_deleted=r.uid in revived)
                if bad:
                    self.say("archived UID %d: flag name(s) not valid in IMAP left out: %r", r.uid, bad[:5])
                with open(path_of(r), "rb") as f:
                    data = imapadmin.append_form(f.read(), conn.binary)
                try:
                    uids.append(conn.append(name, flags, r.internaldate or None, data))
                except BorgCyrusError as e:
                    raise BorgCyrusError(
                        f"{e} (archived UID {r.uid}); {i} of {len(chosen)} appended before (run it again to finish; "
                        "a message Cyrus refuses comes back without --in-place, into a new folder)"
                    ) from None
                faults.point("restore-append")  # the tests' kill between two APPENDs
            back = ",".join(str(u) for u in uids if u is not None)
            self.say(
                "appended %d message(s) to %s %s (new UIDs %s)", len(uids), display(live.intname), who, back or "?"
            )
        finally:
            conn.close()

    def fetch(self, paths, required):
        """Extract into the private staging directory (under --dry-run too: the server is not touched)."""
        t0 = time.monotonic()
        missing = self.s.extract(sorted(set(paths)))
        self.say("extracted %d path(s) from archive %s in %.2f s", len(paths) - len(missing), self.s.archive,
                 time.monotonic() - t0)  # fmt: skip
        lost = sorted(set(required) & missing)
        if lost:
            raise BorgCyrusError(f"the archive lacks {lost[0]}; the dump lists the mailbox but it was not backed up")
        return missing

    def source(self, name):
        by_name = {mb.intname: mb for mb in self.s.dump.mailboxes if mb.has_spool}
        src = by_name.get(to_intname(name))
        if src is None:
            raise BorgCyrusError(f"mailbox {name} is not in archive {self.s.archive}; run `borg-cyrus restore list`")
        return src

    def default_target(self, src):
        """<owner INBOX>/Restored/<archive date>/<folder>, or Restored/<date>/<name> for a shared folder."""
        day = (self.s.dump.manifest.get("created") or time.strftime("%Y-%m-%d"))[:10]
        root = storage.user_root(src)
        if root:
            rest = src.intname[len(root) + 1 :] if src.intname != root else "INBOX"
            return f"{root}.Restored.{day}.{rest}"
        return f"Restored.{day}.{src.intname.split('!', 1)[-1]}"


def add_parser(rsub, parents):
    p = rsub.add_parser(
        "messages", parents=parents, help="single messages of one folder, by UID, date, header, GUID or expunged"
    )
    p.add_argument("mailbox", metavar="MAILBOX", help="admin namespace, e.g. 'user/bob/Sent'")
    p.add_argument("--uid", metavar="SET", help="UIDs, e.g. 1:5,7,10:*")
    p.add_argument("--since", metavar="DATE", help="INTERNALDATE on or after DATE (a day: from its start)")
    p.add_argument("--before", metavar="DATE", help="INTERNALDATE before DATE (a day: before its start)")
    p.add_argument("--from", dest="froms", action="append", default=[], metavar="TEXT", help="From: contains TEXT")
    p.add_argument("--subject", action="append", default=[], metavar="TEXT", help="Subject: contains TEXT")
    p.add_argument("--header", action="append", default=[], metavar="'NAME: TEXT'", help="that header contains TEXT")
    p.add_argument("--guid", action="append", default=[], metavar="HEX", help="the message with this GUID (SHA-1)")
    p.add_argument(
        "--expunged", action="store_true", help="the messages the live folder no longer has (and delayed-expunged ones)"
    )
    p.add_argument("--into", metavar="FOLDER", help="default: <owner>/Restored/<archive date>/<folder>")
    p.add_argument(
        "--in-place",
        action="store_true",
        help="back into the folder itself, new UIDs (IMAP as an admin: imap: settings)",
    )
    p.add_argument("--json", action="store_true", help="print a summary (the metrics' values) as JSON")
    p.add_argument("--force", action="store_true", help="from an archive of another Cyrus version")


def run_args(ctx, session, args, out):
    from borg_cyrus.restore.session import with_lock

    job = MessagesRestore(ctx, session, force=args.force, out=out)
    kw = dict(uids=args.uid, since=args.since, before=args.before, froms=args.froms, subjects=args.subject)
    kw.update(headers=args.header, guids=args.guid, expunged=args.expunged, into=args.into, in_place=args.in_place)
    with_lock(ctx, lambda: job.run(args.mailbox, **kw))
