"""The restore drill's throwaway Cyrus: a config rewritten to the extracted
tree (storage settings carried over, path-valued ones relocated), the
parents `borg extract` made opened for the cyrus user, `restore full`,
then start it on a loopback port."""

import json
import logging
import os
import time

from borg_cyrus.context import bootstrap
from borg_cyrus.cyrus.layout import DATABASES
from borg_cyrus.cyrus.sandbox import Sandbox

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


def open_parents(d):
    """borg extract creates the parents of archived paths as root 0700:
    let the cyrus user through (only directories borg created)."""
    roots = [d.slay.configdirectory, d.slay.sievedir] + d.slay.roots()
    for target in roots:
        p = os.path.dirname(target)
        while len(p) >= len(d.base):
            try:
                st = os.stat(p)
            except FileNotFoundError:
                break
            if st.st_uid == 0 and not st.st_mode & 0o001:
                os.chmod(p, (st.st_mode & 0o7777) | 0o055)
            p = os.path.dirname(p)


def sandbox_conf(d):
    extra = {k: v for k, v in d.conf_values.items() if k in STORAGE_KEYS or k.endswith("_db")}
    extra.update(
        {
            "hashimapspool": "yes" if d.alay.hashimapspool else "no",
            "fulldirhash": "yes" if d.alay.fulldirhash else "no",
            "virtdomains": "on" if d.alay.virtdomains else "off",
            "mailbox_legacy_dirs": "yes" if d.alay.legacy_dirs else "no",
            "quota_db": d.alay.quota_backend,
            "annotation_db": d.alay.annotations[0],
            "mboxlist_db": d.alay.mailboxes_db[0],
        }
    )
    for name, path in d.slay.metapartitions.items():
        extra[f"metapartition-{name}"] = path
    for name, path in d.slay.archivepartitions.items():
        extra[f"archivepartition-{name}"] = path
    dbs = (d.dump.manifest.get("layout") or {}).get("databases") or {}
    for name, info in dbs.items():
        path = info.get("path") or ""
        if name in DATABASES and path and not path.startswith(d.alay.configdirectory.rstrip("/") + "/"):
            extra[DATABASES[name][1]] = d.root + path
    if "quota" in dbs and d.alay.quota_backend != "quotalegacy":
        extra["quota_db_path"] = d.root + dbs["quota"]["path"]
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
    sb = Sandbox(os.path.join(d.base, "cyrus"), partitions=parts, layout=layout, extra_conf=sandbox_conf(d))
    sb.write_config()
    open_parents(d)
    sb.make_dirs()
    cfg_path = os.path.join(d.base, "borg-cyrus.yaml")
    with open(cfg_path, "w") as f:
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
    os.chmod(cfg_path, 0o600)
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
        (f"restored into a throwaway Cyrus (127.0.0.1:{sb.port}) and started it in {time.monotonic() - t0:.2f} s"),
    )
