"""Names and paths that come from Cyrus's files or from an archive are untrusted.

The cyrus user can write mailboxes.db, and anyone holding the repository key
can write an archive, so a uniqueid, a partition, a mailbox name or a path in
a manifest may be crafted to reach outside Cyrus's directories (`/etc/x` as
a uniqueid, `..` in a name, a partition this server does not have). Every such
value is checked here before a path is built from it; a forged entry is
refused with one line naming it, before anything is changed.

Names are data. Cyrus lets an ordinary user create `INBOX/..` or
`INBOX/./x` (internally `user.alice.^^`, `^` standing for a dot); in 3.x a
name never becomes a path (the spool is by uniqueid, and the legacy layout
keeps `^` literal), so such a name is backed up and restored like any other
and only reported (odd_names). What is refused is what would break the path
or the command being built: a uniqueid, partition or domain that is not one,
an empty component or a `/` inside one (another mailbox's directory or name
to Cyrus's tools), a control character. A target name an admin types
(`--into`) must not climb: check_target_name.
"""

import os
import re

from borg_cyrus.safety import pathpolicy
from borg_cyrus.errors import BorgCyrusError

# Cyrus 3.x uniqueids: 24-36 lower-case letters and digits (UUID-like), older
# ones 16 hex digits; dashes appear in some imported ones
UNIQUEID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
PARTITION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UntrustedEntry(BorgCyrusError):
    """An entry of the mailbox list or of an archive that cannot be used safely."""


def mailbox_problem(mb):
    """Why a mailbox-list entry cannot be used to build its paths or to name
    it to a Cyrus tool, or None. A component '.' or '..' is no problem (see
    odd_name): it never reaches a path."""
    if CONTROL.search(mb.intname):
        return "a control character in its name"
    if mb.uniqueid and not UNIQUEID.fullmatch(mb.uniqueid):
        return f"uniqueid {mb.uniqueid!r}, which is not a Cyrus uniqueid"
    if mb.has_spool and not mb.uniqueid and not mb.legacy:
        return "no uniqueid"
    if mb.partition and not PARTITION.fullmatch(mb.partition):
        return f"partition {mb.partition!r}, which is not a partition name"
    domain = mb.domain
    if domain is not None and (not domain or "/" in domain or domain in (".", "..")):
        return f"domain {domain!r}"
    for part in mb.parts:
        # '' or '/' would make the legacy path, or the name given to reconstruct/quota, another mailbox's
        if part == "" or "/" in part:
            return f"a name component {part!r}"
    return None


def odd_name(mb):
    """Why a usable name looks odd ('.' or '..' as a component), or None:
    data to back up and report, never a reason to refuse."""
    for part in mb.parts:
        if part in (".", ".."):
            return f"a name component {part!r}"
    return None


def check_target_name(name, what="--into"):
    """A folder name an admin gives as the target of a restore: no component
    that is empty, '.' or '..' (it would read as another folder, e.g.
    user/alice/x/../../bob/Stolen) and no control character. Returns name."""
    parts = name.strip().strip("/").split("/")
    bad = next((p for p in parts if p in ("", ".", "..")), None)
    if bad is not None or CONTROL.search(name):
        why = f"a name component {bad!r}" if bad is not None else "a control character"
        raise UntrustedEntry(
            f"{what} {name!r} has {why}; give the target folder as a plain name such as "
            "user/bob/Restored (nothing was changed)"
        )
    return name


def check_mailboxes(boxes, where):
    """Raise UntrustedEntry for the first unusable entry."""
    for mb in boxes:
        why = mailbox_problem(mb)
        if why:
            raise UntrustedEntry(
                f"{where}: mailbox {mb.intname!r} has {why}; it looks forged or damaged, so nothing was changed"
            )


def check_userid(userid, where="user name"):
    if not userid or CONTROL.search(userid) or "/" in userid or userid.split("@")[0] in (".", ".."):
        raise UntrustedEntry(f"{where} {userid!r} is not a Cyrus user name")
    return userid


def check_archived_path(path, key, where):
    """A path from an archived manifest: absolute, normal, no '..', no control characters."""
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or pathpolicy.has_dotdot(path)
        or CONTROL.search(path)
        or os.path.normpath(path) != path.rstrip("/")
        and path != "/"
    ):
        raise UntrustedEntry(
            f"{where}: {key} {path!r} is not a plain absolute path; the archive looks forged "
            "or damaged, so nothing was changed"
        )
    return path


def check_archived_layout(lay, where):
    """Every path of an archived layout (storage.PathLayout)."""
    check_archived_path(lay.configdirectory, "configdirectory", where)
    check_archived_path(lay.sievedir, "sievedir", where)
    for label, group in (
        ("partition", lay.partitions),
        ("metapartition", lay.metapartitions),
        ("archivepartition", lay.archivepartitions),
    ):
        for name, path in group.items():
            if not PARTITION.fullmatch(str(name)):
                raise UntrustedEntry(
                    f"{where}: {label} name {name!r} is not a partition name; the archive looks "
                    "forged or damaged, so nothing was changed"
                )
            check_archived_path(path, f"{label}-{name}", where)
    if lay.quota_path:
        check_archived_path(lay.quota_path, "quota database", where)


def inside(path, roots):
    """True when the normalized path lies below one of roots."""
    p = os.path.normpath(path)
    return any(p.startswith(os.path.normpath(r).rstrip("/") + "/") for r in roots)


def check_inside(path, roots, what):
    if pathpolicy.has_dotdot(path) or not inside(path, roots):
        raise UntrustedEntry(
            f"{what}: {path} is outside this server's Cyrus directories "
            f"({', '.join(sorted(roots))}); nothing was changed"
        )
    return path


_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def cyrus_series(version_text):
    """(major, minor) of a `cyr_info version` line ('cyrus-imapd 3.6.1-…'), or None."""
    m = _VERSION.search(version_text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None
