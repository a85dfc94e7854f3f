"""The point-in-time config: a private imapd.conf whose databases are copies
taken from the frozen view and whose partitions point into it, so dumps made
with it describe the same instant as the archived spool (snapshot modes and
rsync-staging)."""

import os
import shutil
import tempfile

from borg_cyrus.cyrus import layout as layout_mod
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.safety import safeio


PIT_PREFIX = "pit-"
OLD_PIT_PREFIX = "/var/tmp/borg-cyrus-pit-"  # where versions before 0.3 put it


def remove_pit_dir(ctx, path):
    """Remove a private config dir made by point_in_time_config (and nothing else)."""
    name = os.path.basename(path)
    ours = os.path.dirname(path) == os.path.normpath(ctx.work_dir) and name.startswith(PIT_PREFIX)
    old = os.path.dirname(path) == os.path.dirname(OLD_PIT_PREFIX) and name.startswith(os.path.basename(OLD_PIT_PREFIX))
    if (ours or old) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)  # fd-based: no symlink below is followed


def point_in_time_config(ctx, prefix, mode_name):
    """A private imapd.conf whose databases are copies taken from the frozen
    view (Cyrus tools recover a twoskip file on open, which needs write
    access), and whose partitions point into it. Dumps made with it describe
    the same instant as the archived spool.

    <work_directory>/pit-XXXX (mkdtemp) stays root's (0711: the cyrus user
    may enter, not list or write) and holds the root-owned imapd.conf; what
    the cyrus user may write is below cyrus/, built by root and handed over
    only when complete, children first: nothing root does afterwards looks
    inside it, so a planted symlink or a swapped file leads root nowhere."""
    live = ctx.layout
    uid, gid = ctx.cyrus_ids()
    blocked = safeio.blocking_parent(ctx.work_dir, uid, gid)
    if blocked:
        path, st = blocked
        raise BorgCyrusError(
            f"the {ctx.config['cyrus_user']} user cannot enter {path} (mode "
            f"{st.st_mode & 0o7777:o}); its tools read the snapshots and the point-in-time config "
            f"below {ctx.work_dir}: run chmod o+x {path}"
        )
    tmp = tempfile.mkdtemp(prefix=PIT_PREFIX, dir=ctx.work_dir)
    ctx.state.push("pit-dir", mode_name, path=tmp)
    cy = os.path.join(tmp, "cyrus")
    os.mkdir(cy, 0o700)
    for sub in ("db", "proc", "lock", "socket"):
        os.mkdir(os.path.join(cy, sub), 0o700)
    values = dict(live.conf.values)
    root = os.path.realpath(prefix).rstrip("/") + "/"

    def frozen(path):
        return prefix.rstrip("/") + path

    def from_view(src, what):
        # the copy comes from the read-only snapshot; a symlink there must not lead out of it
        if os.path.lexists(src) and not os.path.realpath(src).startswith(root):
            raise BorgCyrusError(f"{what} {src} leads out of the snapshot (a symlink?); refusing to copy it")
        return src

    for name, key in (("mailboxes", "mboxlist_db_path"), ("annotations", "annotation_db_path")):
        src = from_view(frozen(live.database(name)[1]), f"{name} database")
        dst = os.path.join(cy, os.path.basename(src))
        try:
            safeio.copy_regular(src, dst)
        except FileNotFoundError:
            pass
        except safeio.NotRegularFile as e:
            raise BorgCyrusError(f"{name} database in the snapshot: {e}; refusing to copy it") from None
        values[key] = dst
    values["configdirectory"] = cy
    # quota tools lock the quota files: give them a writable copy too
    qsrc = from_view(frozen(live.database("quota")[1]), "quota database")
    qdst = os.path.join(cy, "quota" if os.path.isdir(qsrc) else os.path.basename(qsrc))
    if os.path.isdir(qsrc) and not os.path.islink(qsrc):
        safeio.copy_tree(qsrc, qdst)
    elif os.path.lexists(qsrc):
        safeio.copy_regular(qsrc, qdst)
    values["quota_db_path"] = qdst
    for k in list(values):
        if k.startswith(("partition-", "metapartition-", "archivepartition-")):
            values[k] = frozen(values[k])
    values["sievedir"] = frozen(live.sievedir)
    values["proc_path"] = os.path.join(cy, "proc")
    values["mboxname_lockpath"] = os.path.join(cy, "lock")
    for k in ("lmtpsocket", "idlesocket", "notifysocket"):
        values[k] = os.path.join(cy, "socket", k)
    conf = os.path.join(tmp, "imapd.conf")
    safeio.create_file(conf, "".join(f"{k}: {v}\n" for k, v in values.items()).encode(), mode=0o644)
    safeio.chown_tree(cy, uid, gid)
    os.chmod(tmp, 0o711)
    return conf, layout_mod.discover(conf)
