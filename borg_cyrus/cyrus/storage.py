"""Where Cyrus 3.x keeps a mailbox's and a user's files, computed from a layout.

A restore cannot ask the running server (`mbpath`) where a deleted user's
files were, and an archive may come from another machine, so the paths are
computed the way Cyrus computes them, from a layout that is either the live
one (imapd.conf) or the archived one (manifest.json):

- uuid-stored mailboxes (3.x default): <root>/uuid/<u0>/<u1>/<uniqueid>
- legacy-layout mailboxes: imap/mboxname.c mboxname_hash(), e.g.
  <root>/d/user/dave/Old Stuff (hashimapspool, fulldirhash, virtdomains)
- per-user files: <configdirectory>/user/uuid/<c0>/<c1>/<inbox uniqueid>/
  (seen.db, sub.db, ...) or legacy <configdirectory>/user/<h>/<user>.seen ...
- sieve: <sievedir>/uuid/<c0>/<c1>/<inbox uniqueid>/ or <sievedir>/<h>/<user>/
- quota (quotalegacy): lib/cyrusdb_quotalegacy.c hash_quota(),
  <dir of quota db>/quota/<h>/user.alice

tests/test_restore_paths.py checks every answer against `mbpath -j`.
"""

import os
from dataclasses import dataclass, field


# Per-user database suffixes of the legacy layout (imap/user.c, mbpath -u).
LEGACY_USER_SUFFIXES = ("seen", "sub", "conversations", "counters", "dav", "xapianactive")


@dataclass
class PathLayout:
    """The parts of a Cyrus layout that decide where files live."""

    configdirectory: str
    partitions: dict
    sievedir: str
    metapartitions: dict = field(default_factory=dict)
    archivepartitions: dict = field(default_factory=dict)
    hashimapspool: bool = True
    fulldirhash: bool = False
    virtdomains: bool = False
    unixhierarchysep: bool = True
    legacy_dirs: bool = False
    quota_backend: str = "quotalegacy"
    quota_path: str = ""
    annotations: tuple = ("twoskip", "")
    mailboxes_db: tuple = ("twoskip", "")
    metapartition_files: frozenset = frozenset()
    defaultpartition: str = "default"

    @classmethod
    def from_layout(cls, lay):
        """From a discovered live layout (borg_cyrus.layout.Layout)."""
        qb, qp = lay.database("quota")
        return cls(
            configdirectory=lay.configdirectory,
            partitions=dict(lay.partitions),
            sievedir=lay.sievedir,
            metapartitions=dict(lay.metapartitions),
            archivepartitions=dict(lay.archivepartitions),
            hashimapspool=lay.hashimapspool,
            fulldirhash=lay.fulldirhash,
            virtdomains=lay.virtdomains,
            unixhierarchysep=lay.unixhierarchysep,
            legacy_dirs=lay.legacy_dirs,
            quota_backend=qb,
            quota_path=qp,
            annotations=lay.database("annotations"),
            mailboxes_db=lay.database("mailboxes"),
            metapartition_files=frozenset((lay.conf.get("metapartition_files") or "").split()),
            defaultpartition=lay.defaultpartition,
        )

    @classmethod
    def from_manifest(cls, manifest, conf_values=None):
        """From the `layout` of an archived manifest.json (+ archived imapd.conf values)."""
        lj = manifest.get("layout") or {}
        if not lj.get("configdirectory") or not lj.get("partitions"):
            raise ValueError("the manifest has no layout (configdirectory, partitions)")
        dbs = lj.get("databases") or {}
        confdir = lj["configdirectory"]

        def db(name, default):
            d = dbs.get(name) or {}
            return d.get("backend", "twoskip"), d.get("path") or os.path.join(confdir, default)

        qb, qp = db("quota", "quota")
        if "quota" not in dbs:
            qb = "quotalegacy"
        values = conf_values or {}
        return cls(
            configdirectory=confdir,
            partitions=dict(lj["partitions"]),
            sievedir=lj.get("sievedir", "/usr/sieve"),
            metapartitions=dict(lj.get("metapartitions") or {}),
            archivepartitions=dict(lj.get("archivepartitions") or {}),
            hashimapspool=bool(lj.get("hashimapspool", False)),
            fulldirhash=bool(lj.get("fulldirhash", False)),
            virtdomains=bool(lj.get("virtdomains", False)),
            unixhierarchysep=bool(lj.get("unixhierarchysep", True)),
            legacy_dirs=bool(lj.get("mailbox_legacy_dirs", False)),
            quota_backend=qb,
            quota_path=qp,
            annotations=db("annotations", "annotations.db"),
            mailboxes_db=db("mailboxes", "mailboxes.db"),
            metapartition_files=frozenset((values.get("metapartition_files") or "").split()),
            defaultpartition=lj.get("defaultpartition", "default"),
        )

    def roots(self):
        """Every directory under which mailbox files live."""
        out = []
        for group in (self.partitions, self.metapartitions, self.archivepartitions):
            out.extend(group[k] for k in sorted(group))
        return out


def uuid_dir(root, uniqueid):
    return os.path.join(root, "uuid", uniqueid[0], uniqueid[1], uniqueid)


def dir_hash_c(name, full=False):
    """lib/util.c dir_hash_c(): the one-character hash directory of a name."""
    if full:
        n = 0
        for ch in name.encode("utf-8", "surrogateescape"):
            if ch == 0x2E:  # '.'
                break
            n = (((n << 3) ^ (n >> 5)) ^ ch) & 0xFFFFFFFF
        return chr(ord("A") + n % 23)
    c = name[:1].lower()
    return c if "a" <= c <= "z" else "q"


def _split_domain(lay, name, sep):
    if lay.virtdomains and sep in name:
        a, b = name.split(sep, 1)
        return (a, b) if sep == "!" else (b, a)
    return None, name


def mboxname_hash(lay, root, intname):
    """imap/mboxname.c mboxname_hash(): legacy path of a mailbox under root."""
    out = root.rstrip("/")
    domain, name = _split_domain(lay, intname, "!")
    if domain:
        out += f"/domain/{dir_hash_c(domain, lay.fulldirhash)}/{domain}" if lay.hashimapspool else f"/domain/{domain}"
    if lay.hashimapspool:
        idx = name.split(".", 1)[1] if "." in name else name
        rest = f"/{dir_hash_c(idx, lay.fulldirhash)}/{name}"
    else:
        rest = f"/{name}"
    return out + rest.replace(".", "/")


def mailbox_dir(lay, root, mb):
    return mboxname_hash(lay, root, mb.intname) if mb.legacy else uuid_dir(root, mb.uniqueid)


def mailbox_dirs(lay, mb):
    """{"data"|"meta"|"archive": directory} of a mailbox (only the roots that exist in lay)."""
    out = {}
    for kind, group in (("data", lay.partitions), ("meta", lay.metapartitions), ("archive", lay.archivepartitions)):
        root = group.get(mb.partition)
        if root:
            out[kind] = mailbox_dir(lay, root, mb)
    return out


def data_dir(lay, mb):
    root = lay.partitions.get(mb.partition)
    if not root:
        raise KeyError(mb.partition)
    return mailbox_dir(lay, root, mb)


def meta_dir(lay, mb, what):
    """Directory holding cyrus.<what> (header, index, cache, annotations):
    the metapartition when metapartition_files names it, else the data dir."""
    meta = lay.metapartitions.get(mb.partition)
    if meta and what in lay.metapartition_files:
        return mailbox_dir(lay, meta, mb)
    return data_dir(lay, mb)


def index_dir(lay, mb):
    return meta_dir(lay, mb, "index")


def header_dir(lay, mb):
    return meta_dir(lay, mb, "header")


def _user_local(lay, userid):
    domain, local = _split_domain(lay, userid, "@")
    return domain, local


def user_paths(lay, userid, inbox):
    """{"user": [paths], "sieve": [paths]} of a user's per-user files.

    inbox: the user's INBOX (a mboxlist.Mailbox), whose layout (uuid or
    legacy) and uniqueid decide where the files are.
    """
    if inbox is not None and not inbox.legacy:
        u = inbox.uniqueid
        return {
            "user": [os.path.join(lay.configdirectory, "user", "uuid", u[0], u[1], u)],
            "sieve": [os.path.join(lay.sievedir, "uuid", u[0], u[1], u)],
        }
    domain, local = _user_local(lay, userid)
    h = dir_hash_c(local, lay.fulldirhash)
    dpart = f"/domain/{dir_hash_c(domain, lay.fulldirhash)}/{domain}" if domain else ""
    base = f"{lay.configdirectory.rstrip('/')}{dpart}/user/{h}/{local}."
    return {
        "user": [base + s for s in LEGACY_USER_SUFFIXES],
        "sieve": [f"{lay.sievedir.rstrip('/')}{dpart}/{h}/{local}"],
    }


def quota_file(lay, root_intname):
    """lib/cyrusdb_quotalegacy.c hash_quota(): the quota file of a quota root
    (None unless quota_db is quotalegacy)."""
    if lay.quota_backend != "quotalegacy":
        return None
    base = os.path.dirname(lay.quota_path.rstrip("/")) if lay.quota_path else lay.configdirectory
    domain, qr = _split_domain(lay, root_intname, "!")
    if domain:
        base += f"/domain/{dir_hash_c(domain, lay.fulldirhash)}/{domain}"
    idx = qr.split(".", 1)[1] if "." in qr else qr
    return f"{base}/quota/{dir_hash_c(idx, lay.fulldirhash)}/{qr}"


def user_root(mb):
    """Internal name of the user's INBOX for a user mailbox (domain kept), else None."""
    parts = mb.localname.split(".")
    if len(parts) >= 2 and parts[0] == "user":
        local = f"user.{parts[1]}"
        return f"{mb.domain}!{local}" if mb.domain else local
    return None
