"""The restore drill's throwaway Cyrus: a config rewritten to the extracted
tree (storage settings carried over, path-valued ones relocated), `restore
full`, then start it with IMAP on a socket in the drill's private directory.

Every value carried from the archive into the drill's imapd.conf is checked
first: locations and database paths are plain absolute paths (the checks of
every restore), the other settings plain words; a line break could add a key.
"""

import json
import logging
import os
import re
import time

from borg_cyrus.context import bootstrap
from borg_cyrus.cyrus.layout import DATABASES
from borg_cyrus.cyrus.sandbox import Sandbox
from borg_cyrus.safety import trust

# imapd.conf keys that change where or how data is stored, carried into the
# throwaway server (path-valued ones are relocated below the extracted tree).
STORAGE_KEYS = (
    "hashimapspool",
    "fulldirhash",
    "virtdomains",
    "mailbox_legacy_dirs",
    "metapartition_files",
    "archive_enabled",
    "defaultdomain",
    "sieveusehomedir",
    "defaultpartition",
    "improved_mboxlist_sort",
)
# what an archived setting may look like to be carried over: words (a domain,
# a backend, a list of file kinds, a switch)
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.@+-]+( [A-Za-z0-9_.@+-]+)*")


def locations(alay):
    """(key, archived path) of every directory of an archived layout the drill builds on."""
    out = [("configdirectory", alay.configdirectory), ("sievedir", alay.sievedir)]
    for label, group in (
        ("partition", alay.partitions),
        ("metapartition", alay.metapartitions),
        ("archivepartition", alay.archivepartitions),
    ):
        out += [(f"{label}-{name}", group[name]) for name in sorted(group)]
    return out


def carried_value(d, key, value):
    value = str(value)
    ok = trust.PARTITION.fullmatch(value) if key == "defaultpartition" else PLAIN_VALUE.fullmatch(value)
    if not ok:
        raise trust.UntrustedEntry(
            f"{d.where}: the archived setting {key}: {value!r} is not a value the drill carries over; the "
            "archive looks forged or damaged, so the drill stopped"
        )
    return value


def sandbox_conf(d):
    extra = {k: carried_value(d, k, v) for k, v in d.conf_values.items() if k in STORAGE_KEYS or k.endswith("_db")}
    extra.update(
        {
            "hashimapspool": "yes" if d.alay.hashimapspool else "no",
            "fulldirhash": "yes" if d.alay.fulldirhash else "no",
            "virtdomains": "on" if d.alay.virtdomains else "off",
            "mailbox_legacy_dirs": "yes" if d.alay.legacy_dirs else "no",
            "quota_db": carried_value(d, "quota_db", d.alay.quota_backend),
            "annotation_db": carried_value(d, "annotation_db", d.alay.annotations[0]),
            "mboxlist_db": carried_value(d, "mboxlist_db", d.alay.mailboxes_db[0]),
        }
    )
    for name, path in d.slay.metapartitions.items():
        extra[f"metapartition-{name}"] = path
    for name, path in d.slay.archivepartitions.items():
        extra[f"archivepartition-{name}"] = path
    dbs = (d.dump.manifest.get("layout") or {}).get("databases") or {}
    for name, info in dbs.items():  # paths checked with the layout (session.check_archived)
        path = info.get("path") or ""
        if name in DATABASES and path and not path.startswith(d.alay.configdirectory.rstrip("/") + "/"):
            extra[DATABASES[name][1]] = d.root + path
    if "quota" in dbs and d.alay.quota_backend != "quotalegacy":
        extra["quota_db_path"] = d.root + d.alay.quota_path
    extra["unixhierarchysep"] = "yes"  # names as this drill spells them; storage does not depend on it
    extra["altnamespace"] = "no"
    return extra


def start(d):
    """(sandbox, its Context, a report line): a throwaway Cyrus on the extracted
    tree of drill d, after the same `restore full` steps a recovery runs."""
    from borg_cyrus.restore.full import FullRestore

    parts = tuple([d.alay.defaultpartition] + sorted(p for p in d.alay.partitions if p != d.alay.defaultpartition))
    parts = tuple(p for p in parts if p in d.alay.partitions)
    layout = {"configdirectory": d.slay.configdirectory, "sievedir": d.slay.sievedir}
    layout.update({f"partition-{k}": v for k, v in d.slay.partitions.items()})
    sb = Sandbox(os.path.join(d.base, "cyrus"), partitions=parts, layout=layout, extra_conf=sandbox_conf(d), tcp=False)
    sb.write_config()
    sb.make_dirs()
    cfg_path = os.path.join(d.base, "borg-cyrus.yaml")
    fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(
            {
                "imapd_conf": sb.imapd_conf,
                "cyrus_conf": sb.cyrus_conf,
                "work_directory": os.path.join(d.base, "work"),
                "service": sb.borg_cyrus_service(),
                "cyrus_user": d.ctx.config["cyrus_user"],
                "cyrus_group": d.ctx.config["cyrus_group"],
                "cyrus_tools_directory": d.ctx.config.get("cyrus_tools_directory"),
            },
            f,
        )
    sctx = bootstrap(cfg_path)
    t0 = time.monotonic()
    # the drill reports; the restore's own lines are noise here
    quiet = [logging.getLogger(n) for n in ("borg_cyrus.restore.full", "borg_cyrus.backup.dumps")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    try:
        # a drill may try an archive of another Cyrus version (restore full refuses that without --force);
        # a throwaway server needs no search index
        FullRestore(sctx, d.root + d.dump_path, force=True).run(start=False, search_index=False)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    sb.start()
    return (
        sb,
        sctx,
        f"restored into a throwaway Cyrus ({sb.where()}) and started it in {time.monotonic() - t0:.2f} s",
    )
