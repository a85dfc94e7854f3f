"""An archive opened for a restore: repository and archive name (through
borgmatic's configuration), a private staging directory, the archived dump
and layout. Everything extracted is untrusted and sanitized at once."""

import logging
import os
import shutil
import tempfile
import time

from borg_cyrus import state as state_mod
from borg_cyrus.cyrus import imapdconf, storage
from borg_cyrus.errors import BorgCyrusError, ConfigError
from borg_cyrus.restore import archive as archive_mod
from borg_cyrus.safety import pathpolicy, safeio, trust
from borg_cyrus.tools import progress

log = logging.getLogger(__name__)


def archived_conf_values(dump_path, manifest):
    """Values of the archived imapd.conf (and @include files) from the dump's config copy."""
    values = {}
    cfgdir = os.path.join(dump_path, "config")
    files = []
    main = manifest.get("imapd_conf")
    if main:
        files.append(os.path.join(cfgdir, main.lstrip("/")))
    for root, _dirs, names in os.walk(cfgdir):
        for n in sorted(names):
            p = os.path.join(root, n)
            if p not in files and not n.startswith("cyrus.conf"):
                files.append(p)
    for p in files:
        try:
            with open(p, encoding="utf-8", errors="surrogateescape") as f:
                text = "\n".join(ln for ln in f.read().splitlines() if not ln.lstrip().startswith("@"))
            vals, _ = imapdconf.parse_text(text, p)
        except (OSError, ConfigError):
            continue
        for k, v in vals.items():
            values.setdefault(k, v)
    return values


class ArchiveSession:
    """An archive opened for reading: repository, archive name, a private
    staging directory, the archived dump and layout."""

    def __init__(
        self,
        ctx,
        borgmatic_config=None,
        repository=None,
        archive=None,
        staging=None,
        keep_staging=False,
        at=None,
        repo=None,
        shared=None,
    ):
        """repo, shared: a repository already opened and a one-pass reader of
        it that several sessions use in turn (restore find), not closed here."""
        self.ctx = ctx
        from borg_cyrus.restore import onepass

        self.shared = shared
        # the borg helper imports borg (0.3 s) while borgmatic's configuration is read
        self.early = onepass.prestart(ctx.runner) if repo is None and onepass.available() else None
        try:
            self.repo = repo or archive_mod.open_repository(borgmatic_config, repository, ctx.runner)
            # the newest archive is picked by the one-pass reader when load_dump() starts it
            self.archive = self.repo.resolve(archive, at=at) if (archive and archive != "latest") or at else None
        except BaseException:
            if self.early is not None:
                self.early.close()
            raise
        self.reader = None
        self.finished = []  # readers told to end, not yet waited for
        self.staging_parent = staging
        self.keep_staging = keep_staging
        self.dir = None
        self.dump = None
        self.layout = None
        self.tree_override = None  # "." in the child that places files as the cyrus user

    def __enter__(self):
        parent = self.staging_parent
        if parent is not None and pathpolicy.system_reason(parent):
            raise ConfigError(
                f"--staging {parent} {pathpolicy.system_reason(parent)}; give the restore a directory of its own"
            )
        if parent is None:
            parent = os.path.join(self.ctx.work_dir, "staging")
            if self.ctx.dry_run and not os.path.isdir(parent):
                parent = tempfile.gettempdir()
            else:
                state_mod.secure_dir(self.ctx.work_dir, state_mod.WORK_DIR_MODE)
                state_mod.secure_dir(parent)
        else:
            os.makedirs(parent, 0o700, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix=f"restore-{time.strftime('%Y%m%d-%H%M%S')}-", dir=parent)
        os.chmod(self.dir, 0o700)
        return self

    def __exit__(self, exc_type, *exc):
        self.close_reader(kill=exc_type is not None)  # a failed or interrupted restore: borg stops at once
        if self.dir and not self.keep_staging:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.dir:
            log.info("staging directory kept: %s", self.dir)

    @property
    def tree(self):
        return self.tree_override or os.path.join(self.dir, "tree")

    def staged(self, path):
        return self.tree + path

    def sanitize(self):
        """The extracted files are untrusted: make them plain cyrus-owned data
        (symlinks, devices, FIFOs and sockets removed and named; no set-id or
        execute bits) while the staging tree is still root's alone."""
        if not os.path.isdir(self.tree):
            return
        uid, gid = self.ctx.cyrus_ids()
        removed = safeio.sanitize_tree(self.tree, uid, gid)
        if removed:
            shown = ", ".join(f"/{p} ({k})" for p, k in removed[:5])
            log.warning(
                "archive %s: left out %d entr%s that are not regular files or directories: %s%s",
                self.archive,
                len(removed),
                "y" if len(removed) == 1 else "ies",
                shown,
                " …" if len(removed) > 5 else "",
            )
        return removed

    def open_reader(self):
        """Pick the archive (the newest if none was named) and, where borg
        allows, start the one borg process every extract of this session uses."""
        if self.reader is None:
            early, self.early = self.early, None
            self.reader = self.repo.reader(self.archive, conv=early)
            if self.reader is not None:
                self.archive = self.reader.archive
        if self.archive is None:
            self.archive = self.repo.resolve(None)

    def finish_reading(self):
        """No more extracts are coming (a later one starts a new reader): the
        borg process ends and releases the repository while the restore goes on."""
        if self.reader is not None:
            self.reader.finish()
            self.finished.append(self.reader)
            self.reader = None

    def close_reader(self, kill=False):
        if self.early is not None:
            self.early.kill() if kill else self.early.close()
            self.early = None
        self.finish_reading()
        while self.finished:
            reader = self.finished.pop()
            reader.conv.kill() if kill else reader.close()

    def extract(self, paths):
        """Extract paths into the staging tree; the set of those the archive lacks."""
        if self.shared is None or not self.archive:
            self.open_reader()
        with progress.Progress("restore: extract", unit=f"{len(paths)} path(s) of archive {self.archive}"):
            if self.shared is not None and self.archive:
                missing = self.shared.extract(paths, self.tree, archive=self.archive)
            elif self.reader is not None:
                missing = self.reader.extract(paths, self.tree)
            else:
                missing = self.repo.extract(self.archive, paths, self.tree)
        self.sanitize()
        return missing

    def load_dump(self):
        from borg_cyrus.restore.dump import Dump

        dump_path = self.ctx.dump_dir
        missing = self.extract([dump_path])
        if missing:
            found = sorted(p for p in self.repo.list_paths(self.archive) if p.endswith("/dump/manifest.json"))
            if not found:
                raise BorgCyrusError(
                    f"archive {self.archive} holds no borg-cyrus dump (looked for {dump_path} "
                    "and any */dump/manifest.json); was it made with borg-cyrus?"
                )
            dump_path = os.path.dirname(found[0])
            log.info("the archive's dump is at %s (not %s)", dump_path, self.ctx.dump_dir)
            trust.check_archived_path(dump_path, "dump directory", f"archive {self.archive}")
            self.extract([dump_path])
        self.dump_path = dump_path
        self.dump = Dump(self.staged(dump_path), where=f"archive {self.archive}")
        self.conf_values = archived_conf_values(self.dump.path, self.dump.manifest)
        try:
            self.layout = storage.PathLayout.from_manifest(self.dump.manifest, self.conf_values)
        except (ValueError, TypeError, AttributeError) as e:
            raise BorgCyrusError(f"archive {self.archive}: {e}; the dump is too old or damaged") from None
        check_archived(self.dump, self.layout, f"archive {self.archive}")
        return self.dump


def check_archived(dump, layout, where):
    """The archived layout's checks every restore (and verify) runs before a
    path is built from it: its locations, database paths, mailbox partitions."""
    trust.check_archived_layout(layout, f"{where}: manifest.json")
    for name, info in sorted(((dump.manifest.get("layout") or {}).get("databases") or {}).items()):
        if isinstance(info, dict) and info.get("path") is not None:
            trust.check_archived_path(info["path"], f"{name} database", f"{where}: manifest.json")
    for mb in dump.mailboxes:
        if mb.has_spool and mb.partition not in layout.partitions:
            raise trust.UntrustedEntry(
                f"{where}: mailbox {mb.intname!r} is on partition {mb.partition!r}, which the "
                "archived layout does not define; it looks forged or damaged, so nothing was changed"
            )


def with_lock(ctx, fn):
    """Run fn holding borg-cyrus's lock (no backup `before` meanwhile), after
    undoing what a dead backup left (Cyrus stopped); dry runs take no lock."""
    if ctx.dry_run:
        return fn()
    from borg_cyrus.backup.run import recover_dead_run

    state_mod.secure_dir(ctx.work_dir, state_mod.WORK_DIR_MODE)
    with state_mod.lock(ctx.lock_file):
        recover_dead_run(ctx, "restore")
        return fn()
