"""Example borg-cyrus plugin: Cyrus's user deny list (`cyr_deny`, the
`userdeny` database) dumped binary-safe into every backup, and rebuilt from
that dump by `borg-cyrus restore full` when the database is missing."""

import os

from borg_cyrus import DumpRecord, hookimpl
from borg_cyrus.cyrus import dbbatch

NAME = "user_deny.db.batch"


@hookimpl
def dump(ctx, view, dump_dir):
    backend, path = view.layout.database("userdeny")
    if not os.path.exists(path):
        return []
    out = os.path.join(dump_dir, NAME)
    with open(out, "wb") as f:
        ctx.cyrus("cyr_dbtool", path, backend, "batch", conf=view.imapd_conf, input=b"SHOW\n", stdout=f, changes=False)
    with open(out, "rb") as f:
        users = len(dbbatch.parse(f.read()))
    return [DumpRecord(NAME, [NAME], users, os.path.getsize(out))]


@hookimpl
def restore_dump(ctx, dump):
    backend, path = ctx.layout.database("userdeny")
    if dump.record(NAME) is None or dump.file(NAME) is None or os.path.exists(path):
        return []
    if backend != "flat":
        return [f"{path} is missing; its dump {NAME} is {backend}: load it with cyr_dbtool by hand"]
    if ctx.dry_run:
        return [f"would rebuild {path} from {NAME}"]
    with open(dump.file(NAME), "rb") as f:
        records = dbbatch.parse(f.read())
    uid, gid = ctx.cyrus_ids()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)  # an empty flat database
    os.fchown(fd, uid, gid)
    os.close(fd)
    ctx.cyrus("cyr_dbtool", path, backend, "batch", input=dbbatch.load_script(records))
    return [f"rebuilt {path} from {NAME} ({len(records)} denied user(s))"]
