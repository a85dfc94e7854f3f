"""The pure-Python readers (cyrus/dbformats.py) give exactly what
`cyr_dbtool FILE BACKEND batch` SHOW gives, over real Cyrus 3.6 files:

- hypothesis-driven sequences of SET/DELETE transactions written by the real
  cyr_dbtool (binary keys and values, values big enough for Cyrus to
  checkpoint the file), for twoskip and flat, then optionally an uncommitted
  transaction left by a real crash (cyr_dbtool's own `damage` action, or a
  batch that ends without COMMIT: Cyrus aborts with the file dirty) and a
  copy truncated anywhere, mid-record included;
- the seen and subscription databases of a real server after many IMAP
  changes by several users.

cyr_dbtool recovers a dirty twoskip file in place, so it gets its own copy;
the reader reads the bytes first and never writes. Where the reader refuses
(a copy truncated below the last commit, which Cyrus would try to salvage
with its recovery2), it must say so with DbError; everywhere else it must
agree record for record."""

import itertools
import os
import random

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from borg_cyrus.cyrus import dbbatch, dbformats
from borg_cyrus.cyrus.dbformats import DbError

pytestmark = [pytest.mark.slow, pytest.mark.needs_root]
_n = itertools.count()

KEYS = st.binary(min_size=1, max_size=12).filter(lambda k: k != b"\0") | st.sampled_from(
    [b"a", b"b", b"user.x", b"\x1fVER\x1f"]
)
# big values (cheap to generate: seeded random bytes) make Cyrus checkpoint the file past 16 KB
VALUES = st.binary(max_size=120) | st.builds(
    lambda seed, n: random.Random(seed).randbytes(n), st.integers(0, 1 << 30), st.integers(1500, 5000)
)
OP = st.tuples(st.sampled_from(["SET", "SET", "DELETE"]), KEYS, VALUES)
TXNS = st.lists(st.lists(OP, min_size=1, max_size=10), min_size=1, max_size=8)


def _dir(base_dir, sb):
    d = os.path.join(base_dir, "dbs")
    if not os.path.isdir(d):
        os.mkdir(d, 0o755)
        os.chown(d, sb.uid, sb.gid)
    return d


def _script(txns, commit=True):
    out = []
    for ops in txns:
        out.append(b"BEGIN\n")
        for op, k, v in ops:
            if op == "SET":
                out.append(b"SET " + dbbatch.literal(k) + b" " + dbbatch.literal(v) + b"\n")
            else:
                out.append(b"DELETE " + dbbatch.literal(k) + b"\n")
        if commit:
            out.append(b"COMMIT\n")
    return b"".join(out)


def _model(txns):
    m = {}
    for ops in txns:
        for op, k, v in ops:
            if op == "SET":
                m[k] = v
            else:
                m.pop(k, None)
    return m


def _changes(model, ops):
    """Whether ops change model: Cyrus writes nothing for a DELETE of an absent
    key or a SET of the value a key already has."""
    m, changed = dict(model), False
    for op, k, v in ops:
        if op == "SET":
            changed |= m.get(k) != v
            m[k] = v
        else:
            changed |= k in m
            m.pop(k, None)
    return changed


def show(sb, path, backend):
    """What cyr_dbtool batch SHOW lists, or None when it fails."""
    r = sb.tool("cyr_dbtool", path, backend, "batch", input=b"SHOW\n", check=False)
    if r.returncode or b"FAILED" in r.stderr or b"fatal" in r.stderr:
        return None
    return dbbatch.parse(r.stdout)


def _copy(sb, d, data):
    path = os.path.join(d, f"copy-{next(_n)}.db")
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, sb.uid, sb.gid)
    return path


def _ours(reader, data):
    try:
        return reader(data, "test")
    except DbError:
        return None


STATS = {"equal": 0, "refused": 0}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(txns=TXNS, tail=st.sampled_from([None, "damage", "no-commit"]), tail_ops=TXNS, cut=st.floats(0, 1.2))
@example(txns=[[("SET", b"\0\0", b"")]], tail="no-commit", tail_ops=[[("SET", b"\0\0", b"")]], cut=0.0)
def test_twoskip_reader_equals_cyr_dbtool(sandbox, base_dir, txns, tail, tail_ops, cut):
    sb = sandbox
    d = _dir(base_dir, sb)
    path = os.path.join(d, f"t-{next(_n)}.db")
    sb.tool("cyr_dbtool", "-n", path, "twoskip", "batch", input=_script(txns))
    if tail == "damage":  # Cyrus's own "start a commit then die during"
        sb.tool("cyr_dbtool", path, "twoskip", "damage", check=False)
    elif tail == "no-commit":  # a transaction written, never committed: Cyrus aborts with the file dirty
        sb.tool("cyr_dbtool", path, "twoskip", "batch", input=_script(tail_ops[:1], commit=False), check=False)
    data = open(path, "rb").read()
    committed = int.from_bytes(data[48:56], "big")
    writes = tail == "damage" or (tail == "no-commit" and _changes(_model(txns), tail_ops[0]))
    if writes:
        assert len(data) > committed, "the crash left no uncommitted tail"
    n = len(data) if cut > 1 else int(len(data) * cut)
    data = data[:n]
    ours = _ours(dbformats.read_twoskip, data)
    theirs = show(sb, _copy(sb, d, data), "twoskip")
    if n == len(open(path, "rb").read()) or n >= committed:
        # whole, or cut inside the uncommitted tail: Cyrus's recovery1 and the reader agree on the last commit
        assert ours == theirs == sorted(_model(txns).items())
    else:
        assert ours is None or ours == theirs, (n, committed)
    STATS["equal" if ours is not None else "refused"] += 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(txns=TXNS, cut=st.floats(0, 1.2))
def test_flat_reader_equals_cyr_dbtool(sandbox, base_dir, txns, cut):
    sb = sandbox
    d = _dir(base_dir, sb)
    path = os.path.join(d, f"f-{next(_n)}.db")
    sb.tool("cyr_dbtool", "-n", path, "flat", "batch", input=_script(txns))
    data = open(path, "rb").read()
    if cut <= 1:
        data = data[: int(len(data) * cut)]
    ours = _ours(dbformats.read_flat, data)
    theirs = show(sb, _copy(sb, d, data), "flat")
    assert ours == theirs  # also when both refuse a truncated line
    if cut > 1:
        assert dict(ours) == _model(txns)


def test_real_seen_and_subscriptions_after_many_changes(populated, base_dir):
    """Several users mark a shared folder's messages seen and unseen, subscribe
    and unsubscribe, many times; every per-user database then reads alike."""
    sb = populated
    rnd = random.Random(20261202)
    admin = sb.imap()
    users = ["alice", "bob", "carol", "erin"]
    for u in ("carol", "erin"):
        admin.create(f"user/{u}")
    admin.create("shared/board")
    admin.setacl("shared/board", "anyone", "lrsw")
    admin.logout()
    for i in range(12):
        sb.deliver("alice", f"Subject: n{i}\r\n\r\nbody {i}\r\n")
    al = sb.imap("alice")
    for i in range(15):
        al.append("shared/board", None, None, f"Subject: board {i}\r\n\r\nx\r\n".encode())
    al.logout()
    for _round in range(6):
        for u in users:
            c = sb.imap(u)
            for folder in ("shared/board", "shared/team"):
                c.select(folder)
                lo = rnd.randint(1, 10)
                c.store(f"{lo}:{lo + rnd.randint(0, 5)}", "+FLAGS" if rnd.random() < 0.7 else "-FLAGS", "(\\Seen)")
                c.close()
            for folder in ("shared/board", "shared/team", "INBOX"):
                (c.subscribe if rnd.random() < 0.6 else c.unsubscribe)(folder)
            c.logout()
    files = []
    for root, _dirs, names in os.walk(os.path.join(sb.confdir, "user")):
        files += [os.path.join(root, n) for n in names if n in ("seen.db", "sub.db", "mboxkey.db")]
    assert len([f for f in files if f.endswith("seen.db")]) >= 4
    for f in files:
        backend = "flat" if f.endswith("sub.db") else "twoskip"
        reader = dbformats.read_flat if backend == "flat" else dbformats.read_twoskip
        theirs = show(sb, f, backend)
        assert theirs is not None and reader(open(f, "rb").read(), f) == theirs, f


def test_twoskip_crash_tail_cut_mid_record(sandbox, base_dir):
    """A crash in the middle of a transaction (cyr_dbtool's own `damage`, then a
    batch that never commits), its copy cut inside a record of the tail."""
    sb = sandbox
    d = _dir(base_dir, sb)
    path = os.path.join(d, "crash.db")
    txns = [
        [("SET", b"k%03d" % i, b"v" * i) for i in range(40)],
        [("DELETE", b"k%03d" % i, b"") for i in range(0, 40, 3)],
    ]
    sb.tool("cyr_dbtool", "-n", path, "twoskip", "batch", input=_script(txns))
    sb.tool("cyr_dbtool", path, "twoskip", "damage", check=False)
    sb.tool(
        "cyr_dbtool",
        path,
        "twoskip",
        "batch",
        input=_script([[("SET", b"k001", b"new" * 50)]], commit=False),
        check=False,
    )
    data = open(path, "rb").read()
    committed = int.from_bytes(data[48:56], "big")
    assert len(data) - committed > 100 and data[59] & 1  # a tail, the dirty flag
    want = sorted(_model(txns).items())
    for cut in (len(data), committed + 13, committed + 60, len(data) - 5):
        assert dbformats.read_twoskip(data[:cut]) == show(sb, _copy(sb, d, data[:cut]), "twoskip") == want
    with pytest.raises(DbError, match="truncated"):
        dbformats.read_twoskip(data[: committed - 30])
    assert open(path, "rb").read() == data  # the reader never wrote
