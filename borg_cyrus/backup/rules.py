"""Size and age rules (`exclude.rules`): single messages left out of backups.

The Cyrus wiki's `find -size +1024k -mtime +7` lines, done from the index: a
message is left out when its mailbox matches a rule's `mailboxes` glob (the
syntax of `exclude.mailboxes`) and it is larger than `larger_than` and older
than `older_than` (either may be omitted, not both). Size and age come from
the message's cyrus.index record: its `size` and its INTERNALDATE (the date
clients show, not the file's mtime). Only matched mailboxes get their index
read (through the frozen view); an index that cannot be read keeps all its
messages in the backup, with a warning, and so does a record no Cyrus writes
(UID 0, a UID twice: index.vet).

`select` decides; the `excludes` plugin (backup/excludes.py) turns the
decision into one borg pattern per mailbox directory (the UIDs in one regex)
and into the manifest section `excluded_messages` (per mailbox count, bytes
and UIDs as an IMAP sequence set; per rule and total counts). Restores
reconstruct those mailboxes so the messages vanish from the index; verify
counts them as left out on purpose.
"""

import logging
import os
import re
import time
from dataclasses import dataclass, field

from borg_cyrus.cyrus import index, mboxlist, storage
from borg_cyrus.errors import ConfigError

log = logging.getLogger(__name__)

SECTION = "excluded_messages"
UIDS_PER_PATTERN = 20000

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|(b))?\s*$", re.I)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([shdwy])\s*$", re.I)
_AGE_UNITS = {"s": 1, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_size(value):
    """Bytes of a size: a byte count, or 500k, 1MB, 2M, 1G, 1GiB (k, M, G, T
    are powers of 1024, as find's -size). ValueError with a phrase."""
    if isinstance(value, bool):
        raise ValueError("is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("is negative")
        return value
    m = _SIZE.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError("is not a size (a byte count or a number with k, M, G or T)")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])


def parse_age(value):
    """Seconds of an age: 12h, 7d, 2w, 1y (s, h, d, w, y). ValueError with a phrase."""
    m = _AGE.match(value) if isinstance(value, str) and not isinstance(value, bool) else None
    if not m:
        raise ValueError("is not an age (a number with s, h, d, w or y)")
    return int(float(m.group(1)) * _AGE_UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class Rule:
    mailboxes: str
    larger_than: int | None  # bytes
    older_than: int | None  # seconds
    text: str

    def matches(self, rec, now):
        if self.larger_than is not None and not (rec.size is not None and rec.size > self.larger_than):
            return False
        if self.older_than is not None:
            if rec.internaldate is None or rec.internaldate >= now - self.older_than:
                return False
        return True


def load(cfg_rules):
    """Rules of the validated config (`exclude.rules`); ConfigError names the bad one."""
    out = []
    for i, r in enumerate(cfg_rules or []):
        where = f"exclude.rules[{i}]"
        if "larger_than" not in r and "older_than" not in r:
            raise ConfigError(f"{where}: give larger_than, older_than or both")
        try:
            size = parse_size(r["larger_than"]) if "larger_than" in r else None
        except ValueError as e:
            raise ConfigError(f"{where}.larger_than: {r['larger_than']!r} {e}") from None
        try:
            age = parse_age(r["older_than"]) if "older_than" in r else None
        except ValueError as e:
            raise ConfigError(f"{where}.older_than: {r['older_than']!r} {e}") from None
        parts = [f"mailboxes {r['mailboxes']}"]
        parts += [f"larger than {r['larger_than']}"] if size is not None else []
        parts += [f"older than {r['older_than']}"] if age is not None else []
        out.append(Rule(r["mailboxes"], size, age, ", ".join(parts)))
    return out


def sequence_set(uids):
    """1,2,3,7 -> '1:3,7' (the manifest's compact UID list)."""
    out, run = [], None
    for u in sorted(uids):
        if run and u == run[1] + 1:
            run[1] = u
            continue
        if run:
            out.append(f"{run[0]}:{run[1]}" if run[1] != run[0] else str(run[0]))
        run = [u, u]
    if run:
        out.append(f"{run[0]}:{run[1]}" if run[1] != run[0] else str(run[0]))
    return ",".join(out)


def parse_sequence_set(text):
    """'1:3,7' -> {1, 2, 3, 7}; anything else in it is ignored (the manifest is untrusted)."""
    out = set()
    for part in str(text or "").split(","):
        a, _, b = part.partition(":")
        if a.isdigit() and (not b or b.isdigit()):
            lo, hi = int(a), int(b or a)
            if 0 < lo <= hi and hi - lo < 10_000_000:
                out.update(range(lo, hi + 1))
    return out


@dataclass
class Chosen:
    """The messages of one mailbox the rules leave out: (uid, size) per directory."""

    mailbox: object
    by_dir: dict = field(default_factory=dict)  # message directory -> [(uid, size)]
    rules: dict = field(default_factory=dict)  # rule index -> [messages, bytes]

    @property
    def messages(self):
        return sum(len(v) for v in self.by_dir.values())

    @property
    def bytes(self):
        return sum(s for v in self.by_dir.values() for _u, s in v)


@dataclass
class Selection:
    rules: list
    chosen: list  # [Chosen]
    unreadable: list  # [(mailbox name, problem)]


def _dirs(ctx, view, mb, lay, legacy_dirs):
    """(data dir, index path as the view reads it, archive dir or None), or None."""
    if mb.legacy:
        if mb.intname not in legacy_dirs:
            return None
        data, meta = legacy_dirs[mb.intname]  # mbpath answers through the view already
        ipath = os.path.join(meta, "cyrus.index")
        return data, ipath if os.path.exists(ipath) else os.path.join(data, "cyrus.index"), None
    data = storage.data_dir(lay, mb)  # original paths: the patterns file maps them through the view
    ipath = view.read_path(os.path.join(storage.index_dir(lay, mb), "cyrus.index"))
    arch_root = lay.archivepartitions.get(mb.partition)
    arch = storage.mailbox_dir(lay, arch_root, mb) if arch_root else None
    return data, ipath, arch


def _size_problem(view, mb, d, rec):
    """Why rec's size is not its message file's (None when it is, or the file is gone)."""
    f = os.path.join(d, f"{rec.uid}.")
    try:
        st = os.lstat(f if mb.legacy else view.read_path(f))  # a legacy mailbox's d is a view path already
    except OSError:
        return None
    return index.file_problem(rec, st.st_size)


def select(ctx, view, mailboxes, cfg, now=None):
    """The Selection of `exclude` config cfg (rules, and mailboxes wholly
    excluded by `exclude.mailboxes`, which are skipped)."""
    rules = load(cfg.get("rules"))
    sel = Selection(rules, [], [])
    if not rules:
        return sel
    now = time.time() if now is None else now
    whole = mboxlist.NameMatcher(cfg.get("mailboxes") or [])
    matchers = [mboxlist.NameMatcher([r.mailboxes]) for r in rules]
    todo = []
    for mb in mailboxes:
        if not mb.has_spool or (whole and whole.match(mb)):
            continue
        hits = [i for i, m in enumerate(matchers) if m.match(mb)]
        if hits:
            todo.append((mb, hits))
    lay = storage.PathLayout.from_layout(ctx.layout)
    legacy = [mb for mb, _h in todo if mb.legacy]
    legacy_dirs = {}
    if legacy:
        from borg_cyrus.backup.excludes import legacy_paths

        legacy_dirs = legacy_paths(ctx, view, legacy)
    for mb, hits in todo:
        try:
            where = _dirs(ctx, view, mb, lay, legacy_dirs)
        except KeyError:
            where = None
        if where is None:
            sel.unreadable.append((mb.name, "cannot locate its directory"))
            continue
        data, ipath, arch = where
        try:
            ix = index.read(ipath)
        except FileNotFoundError:
            continue  # an empty, never-opened mailbox
        except (OSError, ValueError) as e:
            sel.unreadable.append((mb.name, f"cyrus.index cannot be read ({e})"))
            continue
        if not ix.detailed:
            sel.unreadable.append((mb.name, f"index version {ix.minor_version} is not interpreted"))
            continue
        ch = Chosen(mb)
        records, bad = index.vet(ix.live())
        if bad:  # the cyrus user writes the index: a forged record decides nothing
            shown = ", ".join(f"UID {u} ({why})" for u, why in bad[:5]) + (" …" if len(bad) > 5 else "")
            log.warning("exclude.rules: %s: index record(s) no Cyrus writes, kept in the backup: %s", mb.name, shown)
        for rec in records:
            i = next((i for i in hits if rules[i].matches(rec, now)), None)
            if i is None:
                continue
            d = arch if rec.archived else data
            if d is None:
                continue  # archived without an archive partition: stays in the backup
            if rules[i].larger_than is not None:  # left out for its size: the file's, not only the record's
                why = _size_problem(view, mb, d, rec)
                if why:
                    log.warning("exclude.rules: %s UID %d: %s; kept in the backup", mb.name, rec.uid, why)
                    continue
            ch.by_dir.setdefault(d, []).append((rec.uid, rec.size))
            ch.rules.setdefault(i, [0, 0])
            ch.rules[i][0] += 1
            ch.rules[i][1] += rec.size
        if ch.by_dir:
            sel.chosen.append(ch)
    for name, problem in sel.unreadable:
        log.warning("exclude.rules: %s: %s; its messages stay in the backup", name, problem)
    return sel


def _trie_regex(words):
    """A regex matching exactly these digit strings, as a trie (borg tries every
    file of the directory against it: a flat alternation costs per UID)."""
    trie = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node):
        end = "" in node
        alts = [ch + emit(sub) for ch, sub in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        if end:
            return "(?:" + body + ")?" if len(alts) > 1 or len(body) > 1 else body + "?"
        return body

    return emit(trie)


def uid_regexes(uids):
    """Regexes (relative to the mailbox directory) matching exactly these message files."""
    uids = sorted(set(uids))
    for i in range(0, len(uids), UIDS_PER_PATTERN):
        yield "(?:" + _trie_regex(str(u) for u in uids[i : i + UIDS_PER_PATTERN]) + r")\."


def per_rule(sel):
    """[{rule, messages, bytes, mailboxes: [names]}] in rule order."""
    out = [{"rule": r.text, "messages": 0, "bytes": 0, "mailboxes": []} for r in sel.rules]
    for ch in sel.chosen:
        for i, (n, b) in ch.rules.items():
            out[i]["messages"] += n
            out[i]["bytes"] += b
            out[i]["mailboxes"].append(ch.mailbox.name)
    return out


def manifest_section(sel):
    boxes = {
        ch.mailbox.intname: {
            "messages": ch.messages,
            "bytes": ch.bytes,
            "uids": sequence_set(u for v in ch.by_dir.values() for u, _s in v),
        }
        for ch in sel.chosen
    }
    return {
        "rules": [dict(r, mailboxes=len(r["mailboxes"])) for r in per_rule(sel)],
        "mailboxes": boxes,
        "totals": {
            "mailboxes": len(boxes),
            "messages": sum(b["messages"] for b in boxes.values()),
            "bytes": sum(b["bytes"] for b in boxes.values()),
        },
        "unreadable": [name for name, _p in sel.unreadable],
    }


def archived(manifest, mailboxes):
    """{intname: set of UIDs} a backup left out by rules, for mailboxes of
    the (trusted, checked) mailbox list only: the manifest is untrusted."""
    sec = manifest.get(SECTION) if isinstance(manifest, dict) else None
    boxes = sec.get("mailboxes") if isinstance(sec, dict) else None
    if not isinstance(boxes, dict):
        return {}
    known = {mb.intname for mb in mailboxes}
    out = {}
    for name, rec in boxes.items():
        if name in known and isinstance(rec, dict):
            uids = parse_sequence_set(rec.get("uids"))
            if uids:
                out[name] = uids
    return out


def report_line(n_messages, n_boxes):
    return f"{n_messages} message(s) left out by size/age rules in {n_boxes} mailbox(es): reconstructed"


def restored_line(manifest, mailboxes, sources, dry_run=False):
    """The report line of a partial restore of the archived mailboxes
    `sources` (which it reconstructs), or None when rules left nothing out."""
    left = archived(manifest, mailboxes)
    hit = [mb.intname for mb in sources if mb.intname in left]
    if not hit:
        return None
    line = report_line(sum(len(left[n]) for n in hit), len(hit))
    return line.replace(": reconstructed", ": would be reconstructed") if dry_run else line
