"""`restore find` and `restore history` at 32k candidates / mailboxes, at the
level of the functions that do the matching (find.candidates, new_candidates,
match; the extractor's model.nest_free; history.timelines) on synthetic
archived data: real cyrus.index files and message files in a staging tree,
real manifest entries. The results are checked against what they must be.

No timing: the work is counted as the lines the interpreter runs in
borg_cyrus's own code (sys.settrace). Four times the input must cost at most
about four times the lines (quadratic code costs sixteen). At 32k, history's
walks over the archives' mailbox lists are counted, so a return to one walk
per mailbox fails at once instead of running for hours
(bench/find_history.py times them)."""

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

import borg_cyrus
from borg_cyrus.cyrus import storage
from borg_cyrus.cyrus.mboxlist import Mailbox
from borg_cyrus.model import nest_free
from borg_cyrus.restore import find, history
from test_index_records import index_v17

PKG = os.path.dirname(borg_cyrus.__file__) + os.sep
FOLDERS = 8


class OverBudget(Exception):
    pass


class Lines:
    """Counts the lines run in borg_cyrus's code while active; raises OverBudget past budget."""

    def __init__(self, budget=None):
        self.budget, self.n = budget, 0

    def __enter__(self):
        self.old = sys.gettrace()
        sys.settrace(self._call)
        return self

    def __exit__(self, *exc):
        sys.settrace(self.old)
        return False

    def _call(self, frame, event, arg):
        return self._line if frame.f_code.co_filename.startswith(PKG) else None

    def _line(self, frame, event, arg):
        if event == "line":
            self.n += 1
            if self.budget is not None and self.n > self.budget:
                raise OverBudget(f"more than {self.budget} lines")
        return self._line


def lines_of(fn, *args):
    with Lines() as c:
        fn(*args)
    return c.n


# -- find ------------------------------------------------------------------------
LAY = storage.PathLayout.from_manifest({"layout": {"configdirectory": "/conf", "partitions": {"default": "/spool"}}})
BOXES = [Mailbox("user.u" if f == 0 else f"user.u.F{f}", f"{f:08x}aaaabbbbccccdddd", "default") for f in range(FOLDERS)]


def message(i):
    kind = "even" if i % 2 == 0 else "odd"
    return f"From: s{i}@example.org\r\nSubject: message {i} {kind}\r\nMessage-ID: <m{i}@x>\r\n\r\nbody {i}\r\n".encode()


def archive_tree(tree, numbers, date0=1_700_000_000):
    """An archived user: messages `numbers` spread over the folders (UIDs from 1 in each), as staged."""
    per = {mb.intname: [] for mb in BOXES}
    where = {}
    for i in numbers:
        mb = BOXES[i % FOLDERS]
        data = message(i)
        uid = len(per[mb.intname]) + 1
        per[mb.intname].append((uid, len(data), 0, hashlib.sha1(data).digest()))
        where.setdefault(i, (mb, uid))
        d = tree + storage.data_dir(LAY, mb)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{uid}."), "wb") as f:
            f.write(data)
    for mb in BOXES:
        d = tree + storage.index_dir(LAY, mb)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "cyrus.index"), "wb") as f:
            f.write(index_v17(per[mb.intname]))
    return where


def search(tree, archive, found, subjects):
    """What find does with one archive once its files are staged (the extractor gets the paths as the
    one-pass reader does: nest_free)."""

    def staged(p):
        return tree + p

    cands = find.candidates(LAY, BOXES, staged, archive, None, None)
    fresh = find.new_candidates(cands, found, archive)
    nest_free(sorted({f for _mb, _r, f in fresh}))
    find.match(fresh, staged, archive, [], subjects, [], found)
    return len(cands)


@pytest.fixture
def scratch():
    """A private directory on tmpfs where there is one (40k small files: the shared disk is slow)."""
    d = tempfile.mkdtemp(prefix="find-scaling-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_find_at_32k_candidates(scratch):
    tmp_path = scratch
    """32k candidates in a first archive, 8k in a second (half of them messages of the first, under other
    UIDs): every even message listed once, from the archive it first matched in, with the last holding it."""
    n, k = 32_000, 4_000
    a = archive_tree(str(tmp_path / "a"), range(n))
    b = archive_tree(str(tmp_path / "b"), [*range(n - k, n), *range(n, n + k)][::-1])  # other UIDs
    found = {}
    assert search(str(tmp_path / "a"), "A", found, ["even"]) == n
    assert search(str(tmp_path / "b"), "B", found, ["even"]) == 2 * k
    want = {}
    for i in range(0, n + k, 2):
        mb, uid = a[i] if i < n else b[i]
        first, last = ("A" if i < n else "B"), ("A" if i < n - k else "B")
        want[hashlib.sha1(message(i)).hexdigest()] = (mb.name, uid, first, last, f"message {i} even")
    got = {h["guid"]: (h["mailbox"], h["uid"], h["first"], h["last"], h["subject"]) for h in found.values()}
    assert got == want


def test_find_lists_a_message_once_per_archive():
    class R:
        def __init__(self, guid):
            self.guid = guid

    cands = [("mb1", R(b"x"), "f1"), ("mb2", R(b"x"), "f2"), ("mb1", R(b"y"), "f3"), ("mb1", R(b"z"), "f4")]
    found = {b"z": {"last": "A"}}
    assert [f for _m, _r, f in find.new_candidates(cands, found, "B")] == ["f1", "f3"]
    assert found[b"z"]["last"] == "B"


def find_work(tmp_path, n):
    tree = str(tmp_path / f"t{n}")
    archive_tree(tree, range(n))
    return lines_of(search, tree, "A", {}, ["no such subject"])


def test_find_work_grows_linearly(scratch):
    small, big = find_work(scratch, 250), find_work(scratch, 1000)
    assert big < 5 * small, (small, big)  # pairwise matching: ~16x


# -- nest_free (every extract of a restore) ----------------------------------------
def test_nest_free_work_grows_linearly():
    def paths(n):
        return [f"/spool/uuid/{i % 7}/{i % 11}/box{i % 97}/{i}." for i in range(n)] + ["/spool/uuid/3"]

    small, big = lines_of(nest_free, paths(1000)), lines_of(nest_free, paths(4000))
    assert big < 5 * small, (small, big)
    got = nest_free(["/a/b", "/a", "/a/b/c", "/c/", "/a", "/cd", "/c/d", "x/y", "x"])
    assert got == ["/a", "/c", "/cd", "x"]
    assert nest_free(["/", "/a", "/b/c"]) == ["/"]


# -- history ---------------------------------------------------------------------
def snapshots(m, archives=6):
    """m mailboxes of user u and m of others in each archive; per archive one folder renamed, one gone and
    one back, one deleted under delayed delete."""
    out = []
    for a in range(archives):
        boxes = {}
        for i in range(m):
            if i % archives == a and i % 3 == 0:  # gone in this archive only: back in the next
                continue
            name = f"user.u.F{i}"
            if i % 5 == 1 and a >= i % archives:
                name = f"user.u.R{i}"  # renamed
            if i % 7 == 2 and a >= 3:
                name = f"DELETED.user.u.F{i}.6763A1B0"
            boxes[name] = {"uniqueid": f"u{i}", "messages": i, "bytes": a}
            boxes[f"user.o{i}"] = {"uniqueid": f"o{i}", "messages": 1}
        if a < 2:  # untrusted manifests: a uniqueid that is a list is no uniqueid
            boxes[f"user.u.x{a}"] = {"uniqueid": "s1" if a else ["a", "list"]}
        out.append((f"A{a}", None, boxes))
    return out


class Walks(dict):
    """A manifest's mailboxes that count the walks over them: past `limit`, pairwise lookups are at work."""

    limit = None
    walks = 0

    def _walk(self):
        Walks.walks += 1
        if Walks.limit is not None and Walks.walks > Walks.limit:
            raise OverBudget(f"more than {Walks.limit} walks over the archives' mailbox lists")

    def __iter__(self):
        self._walk()
        return super().__iter__()

    def items(self):
        self._walk()
        return super().items()

    def values(self):
        self._walk()
        return super().values()

    def keys(self):
        self._walk()
        return super().keys()


def test_history_at_32k_mailboxes():
    m = 32_000
    snaps = [(a, t, Walks(boxes)) for a, t, boxes in snapshots(m)]
    Walks.walks, Walks.limit = 0, 4 * len(snaps)  # a few walks per archive, never one per mailbox
    try:
        got = history.timelines(snaps, user="u")
    finally:
        Walks.limit = None
    got = {u: [(a, n, note) for a, _t, n, _e, note in line] for u, line in got.items()}
    want = {f"u{i}": line for i, line in zip(range(m), expected_lines(snaps, m))}
    want["s1"] = [("A1", "user.u.x1", "first seen"), ("A2", None, "gone (deleted or purged)")]
    assert got == want  # other users' mailboxes are not followed
    notes = {note.split(" from ")[0] for line in got.values() for _a, _n, note in line}
    assert notes == {"first seen", "", "renamed", "deleted (delayed)", "gone (deleted or purged)", "back"}


def expected_lines(snaps, m):
    by_id = [(a, {e["uniqueid"]: n for n, e in boxes.items() if isinstance(e.get("uniqueid"), str)})
             for a, _t, boxes in snaps]  # fmt: skip
    for i in range(m):
        line, prev = [], None
        for a, names in by_id:
            name = names.get(f"u{i}")
            if name is None:
                if prev is not None:
                    line.append((a, None, "gone (deleted or purged)"))
                prev = None
                continue
            if prev is None:
                note = "back" if line else "first seen"
            elif name != prev:
                note = "deleted (delayed)" if name.startswith("DELETED.") else "renamed from " + prev.replace(".", "/")
            else:
                note = ""
            line.append((a, name, note))
            prev = name
        yield line


def test_history_work_grows_linearly():
    small, big = (lines_of(history.timelines, snapshots(m), None, "u") for m in (500, 2000))
    assert big < 5 * small, (small, big)


@pytest.mark.parametrize("mailbox", ["user/u/F3", "user/u/R6"])
def test_history_of_one_mailbox_follows_its_renames(mailbox):
    line = next(iter(history.timelines(snapshots(12), mailbox=mailbox).values()))
    assert line[0][4] == "first seen"
    assert mailbox.replace("/", ".") in {n for _a, _t, n, _e, _note in line}
