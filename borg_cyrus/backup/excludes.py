"""Built-in plugin: what to leave out — regenerable data and excluded mailboxes.

Mailbox-name excludes are resolved through the dumped mailbox list to real
directories: Cyrus 3.6 stores new mailboxes by uniqueid
(<partition>/uuid/<u0>/<u1>/<uniqueid>), older ones by name (legacy layout,
resolved with `mbpath`). Only message files (<uid>.) and cyrus.cache are
left out: the folder itself, its index, ACL and annotations stay, so after a
restore the folder exists and is empty.

Size and age rules (`exclude.rules`, backup/rules.py) leave out single
messages: decided once per backup (the `dump` hook, which returns the
manifest section), rendered as one pattern per mailbox directory by the
`excludes` hook.
"""

import json
import logging
import os

from borg_cyrus.cyrus.imapview import mutf7_decode
from borg_cyrus.backup import rules
from borg_cyrus.cyrus import mboxlist, storage
from borg_cyrus.hookspecs import hookimpl
from borg_cyrus.model import DumpRecord, Exclude

log = logging.getLogger(__name__)

MESSAGE_FILES = r"[0-9]+\."
ANYWHERE = r"(?:.*/)?"


def regenerable(ctx, categories):
    lay = ctx.layout
    confdir = lay.configdirectory
    spools = lay.all_partition_dirs()
    out = []
    if "duplicate-db" in categories:
        out.append(Exclude(lay.database("duplicate")[1], None, "duplicate-db: deliver.db"))
    if "cache-dbs" in categories:
        for name in ("tls_sessions", "ptscache", "statuscache", "zoneinfo"):
            out.append(Exclude(lay.database(name)[1], None, f"cache-dbs: {name}"))
    if "search-indexes" in categories:
        for root in spools:
            out.append(Exclude(root, ANYWHERE + r"cyrus\.squat", "search-indexes: squat"))
        out.append(Exclude(confdir, ANYWHERE + r"cyrus\.indexed\.db", "search-indexes: indexed db"))
        for path in lay.searchpartitions.values():
            out.append(Exclude(path, None, "search-indexes: search tier"))
    if "runtime" in categories:
        rt = lay.runtime_paths
        for key in ("proc_path", "mboxname_lockpath", "socket_dir"):
            out.append(Exclude(rt[key], None, f"runtime: {key}"))
        for key in ("lmtpsocket", "idlesocket", "notifysocket"):
            out.append(Exclude(rt[key], None, f"runtime: {key}"))
        for root in spools:
            out.append(Exclude(root, r"stage\.", "runtime: staging"))
            out.append(Exclude(root, r"sync\.", "runtime: sync staging"))
        out.append(Exclude(os.path.join(confdir, "sync"), None, "runtime: sync log"))
        out.append(Exclude(confdir, r"[^/]*\.pid", "runtime: pid files"))
    if "db-backups" in categories:
        for name in ("db.backup1", "db.backup2"):
            out.append(Exclude(os.path.join(confdir, name), None, "db-backups"))
    if "conversations" in categories:
        out.append(Exclude(confdir, ANYWHERE + r"(?:[^/]*\.conversations|conversations\.db)", "conversations"))
    if "message-caches" in categories:
        for root in spools:
            out.append(Exclude(root, ANYWHERE + r"cyrus\.cache", "message-caches"))
    return out


def iter_json_objects(text):
    dec = json.JSONDecoder()
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return
        obj, i = dec.raw_decode(text, i)
        yield obj


def legacy_paths(ctx, view, boxes):
    """{intname: (data dir, meta dir)} for legacy-layout mailboxes, from mbpath."""
    if not boxes:
        return {}
    sep = view.layout.unixhierarchysep
    out = {}
    # 3.10 answers a UTF-8 question with a UTF-8 intname: matched decoded
    by_decoded = {mutf7_decode(mb.intname): mb.intname for mb in boxes}

    def ask(names, check):
        for i in range(0, len(names), 500):
            r = ctx.cyrus("mbpath", "-j", "--", *names[i : i + 500], conf=view.imapd_conf, changes=False, check=check)
            for obj in iter_json_objects(r.text):
                intname = by_decoded.get(mutf7_decode((obj.get("mbname") or {}).get("intname") or ""))
                if intname and obj.get("data"):
                    out[intname] = (obj["data"], obj.get("meta") or obj["data"])

    ask([mboxlist.admin_name(mb.intname, sep) for mb in boxes], True)
    # Cyrus 3.10's mbpath takes non-ASCII names in UTF-8 only
    again = [mb for mb in boxes if mb.intname not in out]
    utf8 = [mboxlist.admin_name(mb.intname, sep, utf8=True) for mb in again]
    utf8 = [n for mb, n in zip(again, utf8) if n != mboxlist.admin_name(mb.intname, sep)]
    if utf8:
        ask(utf8, False)
    missing = sum(1 for mb in boxes if mb.intname not in out)
    if missing:
        log.warning(
            "mbpath did not answer for %d of %d legacy mailboxes; excludes may be incomplete", missing, len(boxes)
        )
    return out


def mailbox_excludes(ctx, view, mailboxes, patterns):
    matcher = mboxlist.NameMatcher(patterns)
    lay = storage.PathLayout.from_layout(ctx.layout)
    chosen = [mb for mb in mailboxes if mb.has_spool and matcher.match(mb)]
    out = []
    legacy = [mb for mb in chosen if mb.legacy]
    legacy_dirs = legacy_paths(ctx, view, legacy)
    for mb in chosen:
        if mb.legacy:
            if mb.intname not in legacy_dirs:
                log.warning("cannot locate legacy mailbox %s; its messages stay in the backup", mb.name)
                continue
            # mbpath answers with the paths it sees through the view (already frozen ones)
            data, meta = legacy_dirs[mb.intname]
        else:
            data, meta = storage.data_dir(lay, mb), storage.meta_dir(lay, mb, "cache")
        reason = f"mailbox {mb.name} (exclude.mailboxes: {matcher.match(mb)})"
        out.append(Exclude(data, MESSAGE_FILES, reason, mb.intname))
        out.append(Exclude(meta, r"cyrus\.cache", reason, mb.intname))
    if chosen:
        log.info("leaving out the messages of %d mailbox(es) matching exclude.mailboxes", len(chosen))
    return out


_last = {}  # the rule selection of this run's view and mailbox list: dump and excludes agree


def rule_selection(ctx, view, mailboxes):
    if _last.get("view") is view and _last.get("mailboxes") is mailboxes:
        return _last["selection"]
    sel = rules.select(ctx, view, mailboxes, ctx.config["exclude"])
    _last.clear()
    _last.update(view=view, mailboxes=mailboxes, selection=sel)
    return sel


def rule_excludes(sel):
    """One pattern per mailbox directory (its UIDs in one regex); no `mailbox`:
    the folder is not emptied, only these messages are left out."""
    out = []
    for ch in sel.chosen:
        for d, msgs in ch.by_dir.items():
            reason = f"mailbox {ch.mailbox.name}: {len(msgs)} message(s) (exclude.rules)"
            out.extend(Exclude(d, rx, reason) for rx in rules.uid_regexes(u for u, _s in msgs))
    return out


@hookimpl
def dump(ctx, view, dump_dir, mailboxes):
    if not ctx.config["exclude"].get("rules"):
        return []
    sel = rule_selection(ctx, view, mailboxes)
    sec = rules.manifest_section(sel)
    t = sec["totals"]
    if t["messages"]:
        log.info(
            "exclude.rules: leaving out %d message(s), %d bytes, in %d mailbox(es)",
            t["messages"],
            t["bytes"],
            t["mailboxes"],
        )
    return [DumpRecord(rules.SECTION, [], t["messages"], t["bytes"], manifest={rules.SECTION: sec})]


@hookimpl
def excludes(ctx, view, mailboxes):
    cfg = ctx.config["exclude"]
    out = regenerable(ctx, set(cfg["regenerable"]))
    out.extend(mailbox_excludes(ctx, view, mailboxes, cfg["mailboxes"]))
    if cfg.get("rules"):
        out.extend(rule_excludes(rule_selection(ctx, view, mailboxes)))
    out.extend(Exclude(os.path.normpath(p), None, "exclude.paths") for p in cfg["paths"])
    return out
