"""`restore find` and `restore history`: borg-cyrus's own time against the
number of candidates and mailboxes, with and without an older revision.

    .venv/bin/python -m bench.find_history                # this checkout
    .venv/bin/python -m bench.find_history --rev b251e3b  # and that revision, side by side
    .venv/bin/python -m bench.find_history --rev b251e3b --doc docs/benchmarks.md

Everything borg-cyrus does is timed; borg is left out, because its share (the
item walk, extracting files) grows linearly and would hide what does not:

- find: `find.run` over 2 archives holding the same synthetic user (N
  messages spread over 8 folders, every one a candidate, a `--subject` that
  matches none, so every candidate's header is read in every archive). The
  archive session is a stand-in serving a synthetic archive already on disk
  (mailbox list, real cyrus.index files, message files); its extract() treats
  the paths as the one-pass reader does (normalised, sorted, `nest_free`).
- history: `history.run --user` over 10 archives whose manifests list M
  mailboxes of that user (one renamed, one deleted and one new per archive)
  and M of others; the stand-in reader writes each manifest.json where borg
  would.

Each point runs in a fresh process (the revision's borg_cyrus first on
sys.path); the median of --reps runs is shown. No root needed. --doc
replaces the section between the markers below in that file (placed before
"What bounds the missed targets" if missing). bench/run rewrites
docs/benchmarks.md whole: run this again after it.
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import types
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- bench.find_history: begin -->", "<!-- bench.find_history: end -->"
FIND_SIZES = (8000, 16000, 32000)
HISTORY_SIZES = (2000, 4000, 8000)
ARCHIVES_FIND, ARCHIVES_HISTORY, FOLDERS = 2, 10, 8
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None  # the synthetic archives: off the shared disk


# -- synthetic data -----------------------------------------------------------
def index_v17(records):
    """A cyrus.index of minor version 17 (Cyrus 3.4-3.8): header, 112-byte records, CRCs.
    records: [(uid, internaldate, size, guid)]."""
    start, rsize = 160, 112
    hdr = bytearray(start)
    struct.pack_into(">IIII", hdr, 8, 17, start, rsize, len(records))
    struct.pack_into(">I", hdr, 28, max((r[0] for r in records), default=0))
    struct.pack_into(">I", hdr, 44, 4242)
    struct.pack_into(">I", hdr, 84, len(records))
    struct.pack_into(">I", hdr, start - 4, zlib.crc32(bytes(hdr[: start - 4])))
    out = [bytes(hdr)]
    for uid, date, size, guid in records:
        r = bytearray(rsize)
        struct.pack_into(">II", r, 0, uid, date)
        struct.pack_into(">I", r, 12, size)
        r[60:80] = guid
        struct.pack_into(">I", r, rsize - 4, zlib.crc32(bytes(r[:-4])))
        out.append(bytes(r))
    return b"".join(out)


def message(i):
    return (
        f"From: Sender {i} <s{i}@example.org>\r\nSubject: message {i}\r\nMessage-ID: <m{i}@example.org>\r\n"
        f"\r\nbody {i}\r\n"
    ).encode()


def find_world(tree, n):
    """The user's folders and an archive tree with their cyrus.index and message files."""
    from borg_cyrus.cyrus import storage
    from borg_cyrus.cyrus.mboxlist import Mailbox

    lay = storage.PathLayout.from_manifest(
        {"layout": {"configdirectory": "/conf", "partitions": {"default": "/spool"}}}
    )
    boxes = [
        Mailbox("user.u" if f == 0 else f"user.u.F{f}", f"{f:08x}aaaabbbbccccdddd", "default") for f in range(FOLDERS)
    ]
    per = {mb.intname: [] for mb in boxes}
    for i in range(n):
        mb = boxes[i % FOLDERS]
        data = message(i)
        uid = len(per[mb.intname]) + 1
        per[mb.intname].append((uid, 1_700_000_000 + i, len(data), hashlib.sha1(data).digest()))
        d = tree + storage.data_dir(lay, mb)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{uid}."), "wb") as f:
            f.write(data)
    for mb in boxes:
        d = tree + storage.index_dir(lay, mb)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "cyrus.index"), "wb") as f:
            f.write(index_v17(per[mb.intname]))
    return lay, boxes


class FakeFindSession:
    """Stands in for ArchiveSession: the synthetic archive is already staged."""

    world = None  # (tree, layout, mailboxes)
    extracted = 0

    def __init__(self, ctx, archive=None, repo=None, shared=None):
        self.tree, self.layout, boxes = self.world
        self.dump = types.SimpleNamespace(mailboxes=boxes)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def load_dump(self):
        pass

    def staged(self, path):
        return self.tree + path

    def extract(self, paths):
        from borg_cyrus.model import nest_free  # what the one-pass reader does with the paths

        paths = sorted({os.path.normpath(p) for p in paths})
        nest_free(paths)
        FakeFindSession.extracted += len(paths)
        return {p for p in paths if not os.path.lexists(self.tree + p)}


class FakeRepo:
    def __init__(self, names, manifests=None):
        self.names, self.manifests = names, manifests

    def archive_times(self):
        import datetime

        t0 = datetime.datetime(2026, 11, 1)
        return [(n, t0 + datetime.timedelta(days=i)) for i, n in enumerate(self.names)]

    def reader(self, _archive):
        return self

    def extract(self, paths, dest, archive=None):
        (path,) = paths
        p = os.path.join(dest, path.lstrip("/"))
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(self.manifests[archive])
        return set()

    def close(self):
        pass

    def __str__(self):
        return "bench-repo"


def history_manifests(m):
    """ARCHIVES_HISTORY manifests: m mailboxes of user u and m of others; each archive one folder renamed,
    one deleted and one new."""
    out = {}
    for a in range(ARCHIVES_HISTORY):
        boxes = {}
        for i in range(m):
            if i == a:  # deleted in this archive
                continue
            name = f"user.u.F{i}" + (".renamed" if i < a else "")
            boxes[name] = {"uniqueid": f"u{i:07d}", "messages": i % 50, "bytes": 1000 * (i % 50)}
        boxes[f"user.u.New{a}"] = {"uniqueid": f"n{a:07d}", "messages": 1, "bytes": 1}
        for i in range(m):
            boxes[f"user.o{i}"] = {"uniqueid": f"o{i:07d}", "messages": 3, "bytes": 3000}
        out[f"archive-{a:02d}"] = json.dumps({"mailboxes": boxes}).encode()
    return out


# -- one point, in its own process ---------------------------------------------
def worker(kind, n, scratch):
    import borg_cyrus

    load = os.getloadavg()[0]
    ctx = types.SimpleNamespace(dump_dir="/work/dump", work_dir=scratch, runner=None)
    lines = []
    if kind == "find":
        from borg_cyrus.restore import archive as archive_mod, find

        tree = os.path.join(scratch, "tree")
        lay, boxes = find_world(tree, n)
        FakeFindSession.world = (tree, lay, boxes)
        find.ArchiveSession = FakeFindSession
        archive_mod.open_repository = lambda *_a: FakeRepo([f"archive-{i}" for i in range(ARCHIVES_FIND)])
        args = types.SimpleNamespace(
            borgmatic_config=None, repository=None, user="u", mailbox=None, since=None, before=None, froms=[],
            subject=["no such subject"], header=[], archives_since=None, json=False,
        )  # fmt: skip
        t0 = time.perf_counter()
        rc = find.run(ctx, args, out=lines.append)
        secs = time.perf_counter() - t0
        assert rc == 1 and lines[0].startswith("0 message(s)"), lines[:2]
        per = secs / ARCHIVES_FIND
        check = FakeFindSession.extracted == ARCHIVES_FIND * (n + FOLDERS)  # every candidate's file asked for
    else:
        from borg_cyrus.restore import history

        repo = FakeRepo([f"archive-{a:02d}" for a in range(ARCHIVES_HISTORY)], history_manifests(n))
        t0 = time.perf_counter()
        rc = history.run(ctx, repo, user="u", out=lines.append)
        secs = time.perf_counter() - t0
        per = secs
        # n + one new folder per archive; the deleted ones are still lines of history
        check = rc == 0 and lines[0] == f"user u: {n + ARCHIVES_HISTORY} mailbox(es) across {ARCHIVES_HISTORY} archives"
    return {"seconds": per, "ok": bool(check), "code": os.path.dirname(borg_cyrus.__file__), "load": load}


def run_point(code_dir, kind, n):
    scratch = tempfile.mkdtemp(prefix="bench-fh-", dir=SCRATCH)
    try:
        env = dict(os.environ, BENCH_FH_CODE=code_dir)
        r = subprocess.run(
            [sys.executable, "-m", "bench.find_history", "--worker", kind, str(n), scratch],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        if r.returncode:
            raise RuntimeError(f"{kind} {n}: {r.stderr[-2000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def resolve(rev):
    return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", rev], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def code_of(rev, tmp):
    """A directory holding borg_cyrus as of rev."""
    d = os.path.join(tmp, rev)
    os.makedirs(d)
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "borg_cyrus"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", d], input=archive.stdout, check=True)
    return d


def measure(revs, reps, find_sizes, history_sizes, checkout=True, cache_path=None, rev_max=None):
    """(labels, rows of medians). cache_path: a JSON file keeping the points of revisions (their code does
    not change), so a later run measures only this checkout again. rev_max: {kind: largest size measured
    for a revision} (a quadratic revision at the largest sizes takes hours)."""
    cache = {}
    if cache_path and os.path.exists(cache_path):
        with open(cache_path) as f:
            cache = json.load(f)
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench-fh-code-")
    try:
        codes = [(f"revision {resolve(rev)}", rev) for rev in revs] + ([("this checkout", None)] if checkout else [])
        dirs = {}
        for kind, sizes in (("find", find_sizes), ("history", history_sizes)):
            for n in sizes:
                row = {"kind": kind, "n": n}
                for label, rev in codes:
                    key = f"{label}|{kind}|{n}"
                    if rev is not None and key in cache:
                        runs = cache[key]
                    elif rev is not None and rev_max and n > rev_max.get(kind, n):
                        continue
                    else:
                        if rev is not None and rev not in dirs:
                            dirs[rev] = code_of(rev, tmp)
                        runs = [run_point(dirs.get(rev, ""), kind, n) for _ in range(reps)]
                        if rev is not None:
                            cache[key] = runs
                            if cache_path:
                                with open(cache_path, "w") as f:
                                    json.dump(cache, f, indent=1)
                    row[label] = {
                        "seconds": statistics.median(r["seconds"] for r in runs),
                        "ok": all(r["ok"] for r in runs),
                        "load": [r.get("load") for r in runs if r.get("load") is not None],
                        "runs": len(runs),
                    }
                    print(f"  {kind} {n}: {label} {row[label]['seconds']:.3f} s", file=sys.stderr, flush=True)
                rows.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [label for label, _r in codes], rows


def table(labels, rows):
    both = len(labels) > 1
    head = "| | size | " + " | ".join(labels) + " |" + (f" {labels[0]} ÷ {labels[-1]} |" if both else "")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    prev = {}
    for r in rows:
        what = (
            "`restore find`, per archive" if r["kind"] == "find" else
            f"`restore history --user`, {ARCHIVES_HISTORY} archives"
        )  # fmt: skip
        unit = "candidates" if r["kind"] == "find" else "mailboxes"
        cells = []
        for lb in labels:
            cell = r.get(lb)
            if cell is None:
                cells.append("–")
                prev.pop((r["kind"], lb), None)
                continue
            p = prev.get((r["kind"], lb))
            growth = f" (×{cell['seconds'] / p:.1f})" if p else ""
            cells.append(f"{cell['seconds']:.2f} s{growth}" + ("" if cell["ok"] else " WRONG RESULT"))
            prev[(r["kind"], lb)] = cell["seconds"]
        ratio = ""
        if both:
            a, z = r.get(labels[0]), r.get(labels[-1])
            ratio = f" {a['seconds'] / z['seconds']:.0f}× |" if a and z else " |"
        out.append(f"| {what} | {r['n']:,} {unit} | " + " | ".join(cells) + " |" + ratio)
    return "\n".join(out)


def loads(labels, rows):
    """'label: min-max' of the 1-minute load average at the start of each timed run."""
    parts = []
    for lb in labels:
        xs = [x for r in rows if r.get(lb) for x in r[lb]["load"]]
        if xs:
            parts.append(f"{lb} {min(xs):.1f}–{max(xs):.1f}")
    return ", ".join(parts)


def write_doc(path, text):
    with open(path) as f:
        doc = f.read()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END) :]
    elif "\n## What bounds" in doc:  # after the report's numbered sections
        i = doc.index("\n## What bounds") + 1
        doc = doc[:i] + block + "\n\n" + doc[i:]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


DOC = """## 6. `restore find` and `restore history` against the number of candidates and mailboxes

_`python -m bench.find_history {args}` on {when} (Python {python}); median of {reps} run(s) per point (a
revision's points are kept in `bench/results/find_history.json` and not run again); ×: growth from the row
above. The machine is the shared one described at the end: 1-minute load average at the start of the timed
runs {loads}, so compare growth and ratios rather than seconds._

{table}

Borg-cyrus's own time, borg left out (it grows linearly: one walk of the archive's items per extract). `find`:
the user's 8 folders hold every candidate, in 2 archives; a `--subject` that matches none makes every
candidate's header be read in every archive. `history`: 10 archives, each listing the user's mailboxes (per
archive one more renamed, one gone until the next, one new) and as many of other users. What was quadratic: find compared each
new candidate with every earlier one of the archive (`all(x.guid != r.guid ...)`), and every extract of every
restore ran `nest_free` over its path list pairwise (the paths of 32k message files: 10⁹ string comparisons);
history looked up each mailbox's uniqueid by walking each archive's whole mailbox list. Now a set of GUIDs, an
ancestor lookup per path and one uniqueid map per archive: O(n). `tests/unit/test_find_scaling.py` checks
the results at 32k candidates and mailboxes and counts the lines run (4× the input, at most ~4× the work), so a
return to quadratic code fails without timing anything.
"""


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.find_history", description=__doc__.split("\n")[0])
    ap.add_argument("--rev", action="append", default=[], help="also measure this git revision (repeatable)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--find", type=int, nargs="+", default=list(FIND_SIZES), metavar="N", help="candidates")
    ap.add_argument("--history", type=int, nargs="+", default=list(HISTORY_SIZES), metavar="M", help="mailboxes")
    ap.add_argument("--rev-max", nargs=2, action="append", default=[], metavar=("KIND", "N"),
                    help="measure revisions of find|history only up to N (default: all sizes)")  # fmt: skip
    ap.add_argument("--no-checkout", action="store_true", help="only the revisions given")
    ap.add_argument("--cache", help="keep the revisions' points in this JSON file (reused by later runs)")
    ap.add_argument("--doc", help="write the table into this Markdown file, between the markers")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        if os.environ.get("BENCH_FH_CODE"):  # that revision's borg_cyrus, not the checkout's (first on sys.path)
            sys.path.insert(0, os.environ["BENCH_FH_CODE"])
        kind, n, scratch = a.worker
        print(json.dumps(worker(kind, int(n), scratch)))
        return 0
    rev_max = {k: int(n) for k, n in a.rev_max}
    labels, rows = measure(a.rev, a.reps, a.find, a.history, not a.no_checkout, a.cache, rev_max)
    text = table(labels, rows)
    print(text)
    if a.doc:
        import platform

        args = " ".join(["--rev " + r for r in a.rev] + [f"--rev-max {k} {n}" for k, n in a.rev_max])
        args += " --find " + " ".join(map(str, a.find)) + " --history " + " ".join(map(str, a.history))
        write_doc(a.doc, DOC.format(args=args, when=time.strftime("%Y-%m-%d %H:%M %z"),
                                    python=platform.python_version(), reps=a.reps, loads=loads(labels, rows),
                                    table=text).rstrip("\n"))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
