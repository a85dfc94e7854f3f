"""One borg process for everything a partial restore reads from one archive.

A `restore user` needs the archive's dump first (to learn which spool
directories are the user's) and then those directories. With borg's command
line that is `borg list` (the newest archive), `borg extract` of the dump and
`borg extract` of the user's paths: three interpreter starts, three repository
opens and three walks over the archive's whole item stream (O(archive items),
seconds on a large spool). Here one helper process, run with the Python of the
installed borg 1.4, opens the repository once, picks the archive from the
manifest, and runs borg's own `extract` code with a matcher of ours once per
request:

- each request is one walk, like `borg extract ARCHIVE PATH...`, that stops
  as soon as every path asked for is behind it (or proved absent): `before`
  puts the dump's root first in the archive and the partitions last, so
  reading the dump costs a few item chunks instead of the whole stream, and a
  user's or a folder's directories end the walk where the last of them ends.

The main process talks to it over JSON lines (execute.Conversation); it is
used only when the borg that borgmatic's configuration runs is the borg 1.4
installed with borg-cyrus (the internals this relies on: Archiver.do_extract,
build_matcher, Manifest.archives). Otherwise archive.Repository runs borg's
command line as before.
"""

import json
import logging
import os
import sys
import time

log = logging.getLogger(__name__)

# the borg series whose internals this module was written against
SERIES = "1.4."


class _Stop(Exception):
    """Raised by the matcher to end a walk early."""


class _Matcher:
    """borg's PatternMatcher interface (empty, match, unmatched includes) for
    include paths, that ends the walk as soon as every path is settled: found
    and left behind, or proved absent. borg walks each root depth-first, so a
    directory's subtree is contiguous in the item stream: once the walk leaves a
    directory, a path inside it that has not matched is not in the archive."""

    def __init__(self, paths):
        # plain strings, never parsed as borg patterns: a path that looks like "re:..." stays a path
        self.paths = {os.path.normpath(p).strip("/") + "/" for p in paths}
        self.hit = set()
        self.open = set(self.paths)
        self.watch = {}  # "dir/" -> paths settled once the walk leaves dir (the path itself or an ancestor)
        for p in self.paths:
            parts = p.rstrip("/").split("/")
            for k in range(1, len(parts) + 1):
                self.watch.setdefault("/".join(parts[:k]) + "/", []).append(p)
        self.inside = []  # watched directories the walk is in, outermost first
        self.matched = 0
        self.extracted = set()
        self.stopped = False
        self._dir, self._dir_match = None, None  # items come grouped by directory

    def _covering(self, d):
        """The path asked for that d ("dir/") lies in, if any."""
        parts = d.rstrip("/").split("/")
        for k in range(1, len(parts) + 1):
            p = "/".join(parts[:k]) + "/"
            if p in self.paths:
                return p
        return None

    def empty(self):
        return False

    def match(self, path):
        here = path + "/"
        while self.inside and not here.startswith(self.inside[-1]):
            for p in self.watch[self.inside.pop()]:
                self.open.discard(p)
        if here in self.watch:  # a directory's own item comes before its contents
            self.inside.append(here)
        d = path.rpartition("/")[0] + "/"
        if d != self._dir:
            self._dir, self._dir_match = d, self._covering(d)
        hit = self._dir_match or (here if here in self.paths else None)
        if hit:
            self.hit.add(hit)
            self.matched += 1
            return True
        if not self.open and len(self.extracted) >= self.matched:
            # borg filters a whole item chunk before it extracts any of its items, so stopping
            # is safe only once every matched item has been extracted: a later chunk's first call
            self.stopped = True
            raise _Stop
        return False

    def get_unmatched_include_patterns(self):
        return []  # reported to the main process instead of as borg warnings

    def unmatched(self):
        return sorted(p.rstrip("/") for p in self.paths - self.hit)


def _emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _text(w):
    """A borg warning_info as the line borg logs."""
    try:
        return w.msg.format(*w.args) if w.wt == "curly" else (w.msg % w.args if w.args else w.msg)
    except (IndexError, KeyError, TypeError, ValueError):
        return str(w.msg)


def _pick(manifest, glob):
    """(ArchiveInfo, matched the glob) of the newest archive."""
    infos = manifest.archives.list(glob=glob, sort_by=["ts"], consider_checkpoints=False) if glob else []
    if infos:
        return infos[-1], True
    infos = manifest.archives.list(sort_by=["ts"], consider_checkpoints=False)
    return (infos[-1] if infos else None), not glob


def helper_main():
    """`python -m borg_cyrus.restore.onepass`: imports borg at once (the slow part,
    while the main process reads its configuration), then reads its start line:
    {"args": [(--archive NAME | --latest [--glob G]), --, BORGOPTS..., REPO],
    "env": {...}, "passphrase": ...}, then one request per line."""
    import argparse

    import borg.archiver as ba
    import borg.helpers as bh

    from borg_cyrus import faults
    from borg.archive import Archive
    from borg.helpers import Manifest

    line = sys.stdin.readline()
    if not line:
        return
    start = json.loads(line)
    os.environ.update(start.get("env") or {})
    if start.get("passphrase") is not None:  # handed to borg as borgmatic does: an anonymous pipe
        r, w = os.pipe()
        os.write(w, start["passphrase"].encode("utf-8"))
        os.close(w)
        os.environ["BORG_PASSPHRASE_FD"] = str(r)
    ap = argparse.ArgumentParser(prog="borg-cyrus-onepass")
    ap.add_argument("--archive")
    ap.add_argument("--latest", action="store_true")
    ap.add_argument("--glob")
    ap.add_argument("borg", nargs=argparse.REMAINDER)
    a = ap.parse_args(start["args"])
    borg_args = [x for x in a.borg if x != "--"]

    base = ba.Archiver
    inner_extract = base.do_extract.__wrapped__.__wrapped__  # below with_repository and with_archive

    class OnePass(base):
        matcher = None

        def build_matcher(self, inclexcl_patterns, include_paths):
            return self.matcher

        @ba.with_repository(compatibility=(Manifest.Operation.READ,))
        def do_extract(self, args, repository, manifest, key):
            if a.latest:
                info, matched = _pick(manifest, a.glob)
                if info is None:
                    _emit({"error": "the repository has no archives"})
                    return
                name = info.name
            else:
                name, matched = args.location.archive, True
                info = manifest.archives.get(name)
                if info is None:
                    _emit({"error": f"archive {name} does not exist"})
                    return
            _emit({"archive": name, "time": info.ts.isoformat(), "matched": matched})
            for n, line in enumerate(iter(sys.stdin.readline, ""), 1):
                req = json.loads(line)
                if n > 1:
                    faults.point("restore-walk")  # the tests' kill during the walk for the data
                seen = len(bh._warnings_list)
                which = req.get("archive") or name  # another archive of the same repository
                if manifest.archives.get(which) is None:
                    _emit({"error": f"archive {which} does not exist"})
                    continue
                os.chdir(req["dest"])  # Archive extracts below the directory it was opened in
                archive = Archive(
                    repository,
                    key,
                    manifest,
                    which,
                    numeric_ids=args.numeric_ids,
                    noflags=args.noflags,
                    noacls=args.noacls,
                    noxattrs=args.noxattrs,
                    consider_part_files=args.consider_part_files,
                    log_json=args.log_json,
                    iec=args.iec,
                )
                self.matcher = m = _Matcher(req["paths"])
                extract_item = archive.extract_item

                def counted(item, *ia, _m=m, _x=extract_item, **kw):
                    _m.extracted.add(item.path)
                    return _x(item, *ia, **kw)

                archive.extract_item = counted
                try:
                    inner_extract(self, args, repository=repository, manifest=manifest, key=key, archive=archive)
                except _Stop:
                    pass
                warnings = [_text(w) for w in bh._warnings_list[seen:]]
                _emit({"done": True, "unmatched": m.unmatched(), "stopped": m.stopped, "warnings": warnings})

    ba.Archiver = OnePass
    location = borg_args.pop() + "::" + (a.archive or "latest")  # --latest: picked from the manifest
    sys.argv = ["borg", "extract", "--log-json", *borg_args, location]
    ba.main()


def usable(repo):
    """Whether repo's borg is the installed borg 1.4 this module can drive."""
    import importlib.util

    from borg_cyrus.restore.archive import _installed_borg_version

    version = _installed_borg_version(repo.borg)
    return bool(version and version.startswith(SERIES) and importlib.util.find_spec("borg.archiver"))


def available():
    """Whether this interpreter has a borg of the series this module drives."""
    import importlib.metadata
    import importlib.util

    try:
        version = importlib.metadata.version("borgbackup")
    except importlib.metadata.PackageNotFoundError:
        return False
    return version.startswith(SERIES) and importlib.util.find_spec("borg") is not None


def prestart(runner):
    """Start a helper now, so that it imports borg while the caller reads
    borgmatic's configuration; Reader(conv=...) then tells it what to read."""
    env = {"BORG_EXIT_CODES": "modern"}  # read by borg at import
    return runner.converse([sys.executable, "-m", "borg_cyrus.restore.onepass"], env=env, what="borg (one pass)")


class Reader:
    """The main process's side: one helper reading one archive."""

    def __init__(self, repo, archive=None, glob=None, conv=None):
        from borg_cyrus.restore.archive import ArchiveError

        self.repo = repo
        args = ["--archive", archive] if archive else ["--latest", *(["--glob", glob] if glob else [])]
        args += ["--", *repo._common(), repo.path]
        env = repo._env()
        fd = env.pop("BORG_PASSPHRASE_FD", None)
        passphrase = None
        if fd:  # borgmatic's pipe, read here: the helper may have started before the configuration was read
            chunks = []
            try:
                while chunk := os.read(int(fd), 65536):
                    chunks.append(chunk)
            finally:
                os.close(int(fd))
            passphrase = b"".join(chunks).decode("utf-8")
        self.conv = conv or prestart(repo.runner)
        self.conv.send({"args": args, "env": env, "passphrase": passphrase})
        hello = self.conv.receive()
        if not hello or "archive" not in hello:
            why = (hello or {}).get("error")
            self.close()
            raise ArchiveError(f"borg cannot read repository {repo}: {why or self.failure()}")
        self.archive = hello["archive"]
        self.matched = hello.get("matched", True)

    def failure(self):
        from borg_cyrus.restore.archive import _clip, _last_line, _log_messages

        msgs = [m for m in _log_messages(self.conv.stderr, plain=False) if m] or [_last_line(self.conv.stderr)]
        return _clip("; ".join(msgs))

    def extract(self, paths, dest, archive=None):
        """Extract paths (absolute, as archived) below dest; the set of given
        paths the archive does not hold. archive: another archive of the
        repository than the one opened (the same borg process reads it)."""
        from borg_cyrus.model import nest_free
        from borg_cyrus.restore.archive import ArchiveError

        paths = sorted({os.path.normpath(p) for p in paths})
        if not paths:
            return set()
        os.makedirs(dest, 0o700, exist_ok=True)
        archive = archive or self.archive
        log.debug("borg (one pass): extracting %s from archive %s", " ".join(paths), archive)
        request = {"paths": nest_free(paths), "dest": os.path.abspath(dest), "archive": archive}
        if not self.conv.send(request):
            raise ArchiveError(f"borg (one pass) ended early: {self.failure()}")
        t0 = time.monotonic()
        reply = self.conv.receive()
        if reply and reply.get("error"):
            raise ArchiveError(f"borg cannot read repository {self.repo}: {reply['error']}")
        if not reply or not reply.get("done"):
            self.close()
            raise ArchiveError(f"borg extract from archive {archive} failed: {self.failure()}")
        log.debug(
            "borg (one pass): %d path(s) from archive %s in %.2f s%s",
            len(paths),
            archive,
            time.monotonic() - t0,
            ", the walk stopped where they end" if reply.get("stopped") else ", a whole walk",
        )
        if reply.get("warnings"):
            raise ArchiveError("borg extract reported a warning: " + "; ".join(map(str, reply["warnings"])))
        return {p for p in paths if not os.path.lexists(dest.rstrip("/") + p)}

    def finish(self):
        """End of requests: the helper exits on its own (close() waits for it)."""
        try:
            self.conv.proc.stdin.close()
        except OSError:
            pass

    def close(self):
        result = self.conv.close()
        if result.returncode not in (0, 1) and result.returncode is not None:
            from borg_cyrus.restore.archive import _log_messages

            # warnings and errors were logged by borg on stderr: keep them visible
            for msg in _log_messages(result.stderr, plain=False):
                if msg:
                    log.warning("borg: %s", msg)
        return result


if __name__ == "__main__":
    helper_main()
