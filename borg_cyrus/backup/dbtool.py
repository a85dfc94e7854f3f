"""Reading a Cyrus database with `cyr_dbtool` for the `databases` plugin
(backup/databases.py), where the pure-Python readers of cyrus/dbformats.py
do not go: skiplist files, quotalegacy directories, conversations.

A snapshot is read-only and Cyrus's tools open databases for writing, so
outside live mode the tool reads a private copy, made by root in a
root-owned 0711 directory below the work directory and handed to the cyrus
user when complete; a killed run's copies are removed by the next one.
"""

import os
import shutil
import tempfile

from borg_cyrus.cyrus import dbbatch, dbfiles
from borg_cyrus.cyrus.dbformats import DbError
from borg_cyrus.safety import safeio

SCRATCH_PREFIX = "dbcopy-"


class ToolReader:
    def __init__(self, ctx, view, live, uid):
        self.ctx, self.view, self.live, self.uid = ctx, view, live, uid
        self._scratch = None

    def records(self, orig, read, backend, directory=False):
        """`cyr_dbtool ... batch` SHOW, on the file itself when reading live, else on a private copy
        (a snapshot is read-only and Cyrus's tools open databases for writing)."""
        if not directory:
            dbfiles.check_file(read, self.uid)
        path = read
        if not self.live and not directory:
            path = self.private_copy(read)
        try:
            r = self.ctx.cyrus(
                "cyr_dbtool",
                path,
                backend,
                "batch",
                conf=self.view.imapd_conf,
                input=b'SHOW ""\n',  # an explicit empty prefix: quotalegacy crashes on a missing one
                changes=False,
                check=False,
            )
        finally:
            if path != read:
                shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        err = r.stderr.decode("utf-8", "replace").strip().splitlines()
        if r.returncode or any("FAILED" in ln or "fatal" in ln for ln in err):
            raise DbError(f"{orig}: cyr_dbtool {backend} batch failed (exit {r.returncode}: {' '.join(err)[:200]})")
        try:
            return dbbatch.parse(r.stdout)
        except dbbatch.BatchFormatError as e:
            raise DbError(f"{orig}: cyr_dbtool {backend} batch gave an unusable dump ({e})") from None

    def private_copy(self, src):
        """A copy of src the cyrus user may open read-write, in a root-owned 0711 directory below the
        work directory (built by root, handed to cyrus when complete; root only removes it later)."""
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=self.ctx.work_dir)
            os.chmod(self._scratch, 0o711)
        d = tempfile.mkdtemp(dir=self._scratch)
        dst = os.path.join(d, os.path.basename(src))
        uid, gid = self.ctx.cyrus_ids()
        safeio.copy_regular(src, dst, uid, gid)
        os.chown(d, uid, gid)
        return dst

    def cleanup(self):
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def remove_stale_scratch(work_dir):
    """Private copies a killed run left below the work directory."""
    for name in os.listdir(work_dir) if os.path.isdir(work_dir) else ():
        p = os.path.join(work_dir, name)
        if name.startswith(SCRATCH_PREFIX) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
