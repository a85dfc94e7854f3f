"""`borg-cyrus before` at 10k users with per-user state, with and without the
text dumps of the `databases` plugin (borg_cyrus/backup/databases.py).

Spool `u10k`: 10,000 users with an INBOX each (10k mailboxes, 10,000 tiny
messages) and one shared folder every user reads: each user marks a
different range of its messages \\Seen (Cyrus keeps that in the user's
seen.db, twoskip) and subscribes INBOX and the shared folder (sub.db, flat).
Everything through Cyrus's own IMAP server, on tmpfs, once; cached like the
other spools (bench/fs.py) and copied onto a btrfs subvolume. `before` runs
in mode `btrfs` as in section 4, the two configurations interleaved.
"""

import json
import os
import shutil
import threading
import time

from bench import fs, spool
from bench.common import log, median
from bench.scaling import one
from bench.spool import Scale

SCALE = Scale("u10k", users=10_000, messages=10_000, folders=(0, 0), flat=True, mix="tiny")
SHARED = "shared/news"
SHARED_MESSAGES = 20
STATE_VERSION = 1  # bump when add_state changes what it writes


def add_state(sb, users, threads=8):
    """Per-user seen state on SHARED and two subscriptions for every user, through IMAP."""
    a = sb.imap()
    a.create(SHARED)
    a.setacl(SHARED, "anyone", "lrs")
    a.setacl(SHARED, "cyrus", "lrswipkxtecda")
    for i in range(SHARED_MESSAGES):
        a.append(SHARED, None, None, f"Subject: news {i}\r\n\r\nissue {i}\r\n".encode())
    a.logout()
    todo = list(enumerate(users))
    lock = threading.Lock()
    errors = []

    def work():
        while True:
            with lock:
                if not todo or errors:
                    return
                i, user = todo.pop()
            lo = 1 + i % SHARED_MESSAGES
            hi = min(SHARED_MESSAGES, lo + i % 7)
            try:
                c = spool.Pipelined(sb.port, user)
                c.run(
                    ["SUBSCRIBE INBOX", f"SUBSCRIBE {SHARED}", f"SELECT {SHARED}", f"STORE {lo}:{hi} +FLAGS (\\Seen)"]
                )
                c.close()
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(f"{user}: {e}")

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError(f"per-user state: {errors[0]}")


def build(scale, dest, use_cache=True):
    """fs.build_spool() plus add_state(), cached under a key of its own."""
    key = f"{fs._cache_key(scale)}-state{STATE_VERSION}"
    cached = os.path.join(fs.CACHE, key)
    info_file = os.path.join(cached, ".bench-spool.json")
    if not (use_cache and os.path.exists(info_file)):
        p = spool.plan(scale)
        gen = os.path.join(fs.SHORT_DIR, "gen")
        with fs.Tmpfs(gen, "8g"):
            srv = fs.Server("gen-" + scale.name, os.path.join(gen, "data"), base=os.path.join(gen, "cyrus")).fresh()
            t = time.monotonic()
            try:
                srv.start()
                info = spool.populate(srv.sb, p, log=log)
                t1 = time.monotonic()
                add_state(srv.sb, sorted({u for u, _f in p.mailboxes}))
                info["state_s"] = time.monotonic() - t1
                log(f"  {scale.name}: seen and subscription state for {scale.users} users in {info['state_s']:.0f} s")
            finally:
                srv.stop()
            info.update(
                scale=scale.describe() + f", per-user seen state on {SHARED} and 2 subscriptions each",
                mailboxes=len(p.mailboxes) + 1,
                messages=len(p.messages) + SHARED_MESSAGES,
                generate_s=time.monotonic() - t,
                how="fast+state",
            )
            with open(os.path.join(gen, "data", ".bench-spool.json"), "w") as f:
                json.dump(info, f)
            shutil.rmtree(cached, ignore_errors=True)
            os.makedirs(fs.CACHE, exist_ok=True)
            fs.sh("cp", "-a", os.path.join(gen, "data"), cached + ".partial")
            os.rename(cached + ".partial", cached)
    os.makedirs(dest, exist_ok=True)
    fs.sh("cp", "-a", cached + "/.", dest)
    with open(info_file) as f:
        return json.load(f)


def _manifest(work):
    with open(os.path.join(work, "dump", "manifest.json")) as f:
        return json.load(f)


def run(bench, reps):
    bed = bench.testbed(SCALE, build=build)
    cfgs = {
        "with": bed.borg_cyrus_config("dbs-with", bed.work("dbs-with"), "btrfs"),
        "without": bed.borg_cyrus_config("dbs-without", bed.work("dbs-without"), "btrfs", databases={"enabled": False}),
    }
    rss_file = os.path.join(bed.dir, "rss-dbs.json")
    for bc in cfgs.values():
        one(bed, bc, rss_file)  # warm-up
    runs = {k: {"before": [], "rss": [], "plugin": []} for k in cfgs}
    for r in range(reps):
        for name in list(cfgs)[r % 2 :] + list(cfgs)[: r % 2]:  # rotate the order every round
            secs, rss, _after = one(bed, cfgs[name], rss_file)
            runs[name]["before"].append(secs)
            runs[name]["rss"].append(rss["self_kb"] / 1024)
            m = _manifest(bed.work(f"dbs-{name}"))
            runs[name]["plugin"].append(
                sum(d["seconds"] for d in m["dumps"] if d.get("plugin") == "databases") if name == "with" else 0.0
            )
    m = _manifest(bed.work("dbs-with"))
    out = {
        "scale": SCALE.name,
        "scale_desc": bed.info.get("scale"),
        "users": SCALE.users,
        "mailboxes": m["counts"]["mailboxes"],
        "reps": reps,
        "databases": m.get("databases"),
    }
    for name, v in runs.items():
        out[name] = {
            "before_s": median(v["before"]),
            "before_runs": v["before"],
            "self_mb": median(v["rss"]),
            "plugin_s": median(v["plugin"]),
            "timings": _manifest(bed.work(f"dbs-{name}")).get("timings", {}),
        }
    out["added_s"] = out["with"]["before_s"] - out["without"]["before_s"]
    log(
        f"    {SCALE.name}: before {out['with']['before_s']:.2f} s with the database dumps, "
        f"{out['without']['before_s']:.2f} s without (+{out['added_s']:.2f} s; the plugin itself "
        f"{out['with']['plugin_s']:.2f} s, {(out['databases'] or {}).get('entries')} files)"
    )
    bench.drop_testbed(SCALE)
    return out


# -- report ----------------------------------------------------------------------


def headline_row(u, s, target):
    """(target, goal, measured, verdict) for the Targets table."""
    w, wo = u["with"], u["without"]
    met = w["before_s"] <= target
    return (
        f"`before` at 10k users with seen/subscription state ({u['mailboxes']} mailboxes), with the database dumps",
        f"≤ {target:.0f} s (the 10k-mailbox target)",
        f"{s(w['before_s'])} with, {s(wo['before_s'])} without: the dumps add {s(u['added_s'])} "
        f"(the plugin's own time {s(w['plugin_s'])}, {(u.get('databases') or {}).get('entries')} databases)",
        "**met**" if met else "**missed**",
    )


def section(u, s, table):
    kinds = (u.get("databases") or {}).get("kinds") or {}
    rows = [(k, v["backend"], v["files"], v["records"], f"{v['bytes'] / 1e6:.2f} MB") for k, v in sorted(kinds.items())]
    out = ["## 4b. `before` with the per-user database dumps, at 10k users\n"]
    out.append(
        f"Spool `{u['scale']}`: {u.get('scale_desc')}. Mode `btrfs`, median of {u['reps']} runs per "
        "configuration after a warm-up, the two interleaved: the defaults (the `databases` plugin dumps every "
        "stateful database into `dump/databases/`, per-user files read by the pure-Python twoskip and flat "
        "readers) against `databases: {enabled: false}`.\n"
    )
    out.append(
        table(
            ["configuration", "`before` (median)", "runs", "peak RSS", "`databases` plugin", "dumps phase"],
            [
                (
                    name,
                    s(v["before_s"]),
                    ", ".join(s(x) for x in v["before_runs"]),
                    f"{v['self_mb']:.0f} MB",
                    s(v["plugin_s"]) if name == "with" else "–",
                    s(v["timings"].get("dumps")),
                )
                for name, v in (("with", u["with"]), ("without", u["without"]))
            ],
        )
        + "\n"
    )
    out.append(table(["kind", "backend", "files", "records", "dump size"], rows) + "\n")
    per_user = u["added_s"] / max(1, u["users"]) * 1e6
    out.append(
        f"The dumps add {s(u['added_s'])} to `before`, {per_user:.0f} µs per user: one directory listing, "
        "two `open`/`read` of a few hundred bytes and two parses per user, the dumps appended to one file per "
        "kind, and no process started (a `cyr_dbtool` per database would be 20,000 processes; a dump file per "
        "database cost 7 s more here: file creation on this disk is 0.1-0.3 ms).\n"
    )
    return "\n".join(out)
