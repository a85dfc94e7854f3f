"""Hourly database-only backups at 10k mailboxes (README "Hourly database
backups"): `borg-cyrus before --dumps-only` alone, the whole `borgmatic
create` through the shipped sample-borgmatic-hourly.yaml (repository and
patterns path changed, nothing else), and how much each hourly run adds to
the repository.

Spool: the 10k-mailbox point of section 4 (`sweep(10_000)`), Cyrus running
(nothing is stopped or frozen in this mode). Between two `borgmatic create`
runs one message is delivered over LMTP, as on a server in use; the growth
is the repository's size on disk (`du -sb`) after minus before, the first
run (the whole dump, into an empty repository) reported apart.
"""

import os
import subprocess
import sys

import yaml

from bench.common import env, log, median, timed
from bench import spool
from bench.scales import sweep
from bench.testbed import manifest

SCALE = sweep(10_000)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = {"dumps_only_s": 1.0, "create_s": 2.0}


def _du(path):
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def _config(bed, repo, work):
    with open(os.path.join(ROOT, "sample-borgmatic-hourly.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["repositories"] = [{"path": repo, "label": "hourly"}]
    cfg["patterns_from"] = [os.path.join(work, "patterns-dumps")]
    path = os.path.join(bed.dir, "borgmatic-hourly.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def run(bench, reps):
    bed = bench.testbed(SCALE)
    work = bed.work("hourly")
    bc = bed.borg_cyrus_config("hourly", work, "btrfs")
    repo = bed.repo("hourly", fresh=True)
    cfg = _config(bed, repo, work)
    e = env()
    dumps_only = []
    timed(["borg-cyrus", "-c", bc, "before", "--dumps-only"], env_=e)  # warm-up
    for _ in range(reps):
        dumps_only.append(timed(["borg-cyrus", "-c", bc, "before", "--dumps-only"], env_=e).seconds)
    empty = _du(repo)
    first = bed.borgmatic(cfg, bc_config=bc)
    first_growth = _du(repo) - empty
    creates, growth, hooks = [], [], []
    for i in range(reps):
        bed.server.sb.deliver(spool.user_name(0), f"Subject: hourly {i}\r\n\r\nbetween two hourly runs\r\n")
        size = _du(repo)
        r = bed.borgmatic(cfg, bc_config=bc)
        creates.append(r.seconds)
        hooks.append(r.hooks)
        growth.append(_du(repo) - size)
    m = manifest(work)
    out = {
        "scale": SCALE.name,
        "mailboxes": (m.get("counts") or {}).get("mailboxes"),
        "reps": reps,
        "dumps_only_s": median(dumps_only),
        "dumps_only_runs": dumps_only,
        "create_s": median(creates),
        "create_runs": creates,
        "create_hooks": hooks,
        "first_create_s": first.seconds,
        "first_growth_bytes": first_growth,
        "growth_bytes": median(growth),
        "growth_runs": growth,
        "dump_bytes": _du(os.path.join(work, "dump")),
    }
    log(
        f"    hourly at {out['mailboxes']} mailboxes: before --dumps-only {out['dumps_only_s']:.2f} s, "
        f"borgmatic create {out['create_s']:.2f} s, +{out['growth_bytes'] / 1e3:.0f} kB per run "
        f"(first run +{first_growth / 1e6:.1f} MB)"
    )
    bench.drop_testbed(SCALE)
    return out


# -- report ----------------------------------------------------------------------


def headline_rows(h, s):
    """(target, goal, measured, verdict) rows for the Targets table."""

    def verdict(ok):
        return "**met**" if ok else "**missed**"

    return [
        (
            f"`before --dumps-only` at {h['mailboxes']} mailboxes",
            f"≤ {TARGETS['dumps_only_s']:.0f} s",
            s(h["dumps_only_s"]),
            verdict(h["dumps_only_s"] <= TARGETS["dumps_only_s"]),
        ),
        (
            "hourly `borgmatic create` (sample-borgmatic-hourly.yaml), same spool",
            f"≤ {TARGETS['create_s']:.0f} s",
            f"{s(h['create_s'])}; the repository grows {h['growth_bytes'] / 1e3:.0f} kB per run",
            verdict(h["create_s"] <= TARGETS["create_s"]),
        ),
    ]


def section(h, s, table):
    out = ["## 4c. Hourly database-only backups, at 10k mailboxes\n"]
    out.append(
        f"Spool `{h['scale']}` ({h['mailboxes']} mailboxes), Cyrus running. `before --dumps-only` alone "
        f"(median of {h['reps']} after a warm-up), then `borgmatic create` with the shipped "
        "sample-borgmatic-hourly.yaml, one message delivered between two runs; growth is the "
        "repository's `du -sb` after minus before.\n"
    )
    out.append(
        table(
            ["step", "median", "runs"],
            [
                ("`before --dumps-only`", s(h["dumps_only_s"]), ", ".join(s(x) for x in h["dumps_only_runs"])),
                ("`borgmatic create` (hourly)", s(h["create_s"]), ", ".join(s(x) for x in h["create_runs"])),
                ("first `borgmatic create` (empty repository)", s(h["first_create_s"]), "1"),
            ],
        )
        + "\n"
    )
    out.append(
        f"The dump directory is {h['dump_bytes'] / 1e6:.1f} MB; the first run adds "
        f"{h['first_growth_bytes'] / 1e6:.1f} MB to the repository, each later one "
        f"{h['growth_bytes'] / 1e3:.0f} kB (runs: {', '.join(f'{g / 1e3:.0f} kB' for g in h['growth_runs'])}): "
        "borg stores only the chunks of the dump files that changed.\n"
    )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit("run through bench/run --only hourly")
