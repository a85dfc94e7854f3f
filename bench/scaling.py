"""`borg-cyrus before` time and peak memory against the number of mailboxes
(and, at a fixed mailbox count, against 10x the messages).

Each spool is a btrfs subvolume of its own; `before` runs in mode `btrfs`
(snapshot, point-in-time copies of the databases, dumps, per-mailbox counts
from cyrus.index headers, consistency scan, excludes, patterns) followed by
`after`, several times, without a `borg create` in between (it does not
change what `before` does). Peak memory: VmHWM of the borg-cyrus process
itself, recorded by bench/rss_wrap.py.
"""

import importlib.util
import json
import os
import re
import sys

from bench.common import env, log, median, timed
from bench.testbed import manifest


def one(bed, bc, rss_file):
    r = timed(
        [sys.executable, "-m", "bench.rss_wrap", rss_file, "-c", bc, "before"],
        env_=env({"PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}),
    )
    with open(rss_file) as f:
        rss = json.load(f)
    a = timed(["borg-cyrus", "-c", bc, "after"], env_=env())
    return r.seconds, rss, a.seconds


def profile(bed, bc, out_txt):
    """pyinstrument's call tree of one `before` (text), and the top frames."""
    if importlib.util.find_spec("pyinstrument") is None:
        return {"error": "pyinstrument is not installed (pip install 'borg-cyrus[bench]')"}
    r = timed(
        [
            sys.executable,
            "-m",
            "pyinstrument",
            "-r",
            "text",
            "--show-all",
            "-o",
            out_txt,
            "-m",
            "borg_cyrus",
            "-c",
            bc,
            "before",
        ],
        env_=env(),
        check=False,
    )
    timed(["borg-cyrus", "-c", bc, "after"], env_=env(), check=False)
    if r.returncode:
        return {"error": (r.stderr or r.stdout)[-1500:]}
    with open(out_txt) as f:
        text = f.read()
    return {"text": trim(text), "top": top_frames(text), "full_profile": out_txt}


def trim(text, frac=0.005):
    """The header and the frames holding at least `frac` of the run (the full tree is ~200 KB)."""
    total = None
    out = []
    for ln in text.splitlines():
        m = re.match(r"^[\s│├└─]*([0-9.]+)\s", ln)
        if not m:
            out.append(ln)
            continue
        secs = float(m.group(1))
        total = total or secs
        if secs >= frac * total:
            out.append(ln)
    return "\n".join(out)


def top_frames(text, n=14):
    """The heaviest borg_cyrus frames of a pyinstrument text tree: (seconds, function, file:line)."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"^[\s│├└─]*([0-9.]+)\s+(\S+)\s+(\S+)$", line)
        if m and ("borg_cyrus" in m.group(3) or "subprocess" in m.group(3) or "selectors" in m.group(3)):
            rows.append((float(m.group(1)), m.group(2), m.group(3)))
    seen = set()
    out = []
    for secs, fn, where in sorted(rows, key=lambda x: -x[0]):
        if (fn, where) in seen:
            continue
        seen.add((fn, where))
        out.append({"seconds": secs, "function": fn, "where": where})
    return out[:n]


def run(bench, scales, reps, profile_largest=False):
    out = {"reps": reps, "points": []}
    for scale in scales:
        bed = bench.testbed(scale)
        work = bed.work("before")
        bc = bed.borg_cyrus_config("before", work, "btrfs")
        rss_file = os.path.join(bed.dir, "rss.json")
        one(bed, bc, rss_file)  # warm-up (page cache, first snapshot)
        secs, selfkb, after = [], [], []
        for _ in range(reps):
            s, rss, a = one(bed, bc, rss_file)
            secs.append(s)
            selfkb.append(rss["self_kb"])
            after.append(a)
        m = manifest(work)
        point = {
            "scale": scale.name,
            "scale_desc": scale.describe(),
            "mailboxes": m.get("counts", {}).get("mailboxes"),
            "messages": m.get("counts", {}).get("messages"),
            "before_s": median(secs),
            "before_runs": secs,
            "after_s": median(after),
            "self_mb": median(selfkb) / 1024,
            "timings": m.get("timings", {}),
        }
        out["points"].append(point)
        log(
            f"    {scale.name:10} {point['mailboxes']:>7} mailboxes {point['messages']:>7} messages: before "
            f"{point['before_s']:.2f} s, peak RSS {point['self_mb']:.0f} MB; "
            + ", ".join(f"{k} {v:.2f}" for k, v in point["timings"].items())
        )
        if profile_largest and scale is max(scales, key=lambda s: s.users * (s.folders[0] + 1)):
            out["profile"] = profile(bed, bc, os.path.join(bed.dir, "profile.txt"))
            out["profile"]["scale"] = scale.name
        bench.drop_testbed(scale)
    pts = [p for p in out["points"] if p["mailboxes"]]
    # least-squares line through the mailbox sweep (the x10 point is compared separately)
    sweep = [p for p in pts if "-x" not in p["scale"]]
    if len(sweep) >= 2:
        xs = [p["mailboxes"] for p in sweep]
        ys = [p["before_s"] for p in sweep]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        out["fit"] = {"fixed_s": my - b * mx, "per_1k_mailboxes_s": b * 1000}
    return out
