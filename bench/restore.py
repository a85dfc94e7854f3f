"""Single-user restore: `borg-cyrus restore user USER` into the running
server against a raw `borg extract` of exactly that user's directories.

The user is the one at the 90th percentile of archived bytes. Before every
restore the user is deleted over IMAP (an admin DELETE of user/NAME removes
all their folders), so each restore recreates every mailbox. Both the raw
extract and borg-cyrus's staging directory are on the spool's filesystem.
After each restore the message counts seen over IMAP are compared with the
archived manifest.
"""

import os
import shutil

from bench.common import env, log, median, ratio, sh, timed
from bench.testbed import manifest


def latest_archive(repo):
    r = sh("borg", "list", "--short", repo, env=env())
    return r.stdout.split()[-1]


def user_stats(m):
    users = {}
    for name, e in (m.get("mailboxes") or {}).items():
        parts = name.split(".")
        if len(parts) < 2 or parts[0] != "user":
            continue
        u = users.setdefault(parts[1], {"mailboxes": 0, "messages": 0, "bytes": 0, "boxes": {}})
        u["mailboxes"] += 1
        u["messages"] += e.get("messages") or 0
        u["bytes"] += e.get("bytes") or 0
        u["boxes"][name] = e
    return users


def user_paths(m, user, info):
    lay = m["layout"]
    parts = lay["partitions"]
    out = []
    for _name, e in info["boxes"].items():
        u = e["uniqueid"]
        out.append(os.path.join(parts[e.get("partition") or "default"], "uuid", u[0], u[1], u))
    inbox = info["boxes"].get(f"user.{user}")
    if inbox:
        u = inbox["uniqueid"]
        # seen/subscription files: only once the user has logged in (not for spools written by reconstruct)
        conf = os.path.join(lay["configdirectory"], "user", "uuid", u[0], u[1], u)
        if os.path.isdir(conf):
            out.append(conf)
    return out


def imap(sb, user="cyrus"):
    import imaplib

    c = imaplib.IMAP4("127.0.0.1", sb.port, timeout=120)
    c.login(user, "x")
    return c


def imap_counts(sb, user):
    c = imap(sb, user)
    try:
        typ, data = c.list()
        total = 0
        boxes = 0
        for line in data or []:
            if not line:
                continue
            name = line.decode().rsplit(' "/" ', 1)[-1] if isinstance(line, bytes) else str(line)
            typ, st = c.status(name, "(MESSAGES)")
            if typ == "OK":
                total += int(st[0].decode().rsplit("MESSAGES ", 1)[1].rstrip(")"))
                boxes += 1
        return boxes, total
    finally:
        c.logout()


def delete_user(sb, user):
    c = imap(sb)
    try:
        c.setacl(f"user/{user}", "cyrus", "lrswipkxtecda")  # admins hold 'a' implicitly, not 'x'
        typ, data = c.delete(f"user/{user}")
        if typ != "OK":
            raise RuntimeError(f"DELETE user/{user}: {typ} {data}")
    finally:
        c.logout()


def run(bench, scale, reps, find=True):
    bed = bench.testbed(scale)
    from bench.blocked import ensure_server

    ensure_server(bed.server.sb)
    work = bed.work("btrfs")
    bc = bed.borg_cyrus_config("btrfs", work, "btrfs")
    repo = bed.repo("btrfs")
    cfg = bed.borgmatic_bc("bc-btrfs", repo, work)
    # a fresh archive of the current state (the nightly section's may predate the write-blocked runs)
    bed.borgmatic(cfg, bc_config=bc)
    m = manifest(work)
    archive = latest_archive(repo)
    users = user_stats(m)
    ranked = sorted(users, key=lambda u: users[u]["bytes"])
    user = ranked[int(len(ranked) * 0.9)] if ranked else None
    info = users[user]
    paths = user_paths(m, user, info)
    sb = bed.server.sb
    help_text = sh("borg-cyrus", "restore", "--help", env=env(), check=False).stdout
    has_user = " user " in help_text or "\n    user" in help_text
    out = {
        "scale": scale.name,
        "scale_desc": scale.describe(),
        "user": user,
        "user_mailboxes": info["mailboxes"],
        "user_messages": info["messages"],
        "user_bytes": info["bytes"],
        "paths": len(paths),
        "reps": reps,
        "archive_users": len(users),
        "archive_bytes": sum(u["bytes"] for u in users.values()),
        "restore_user_available": has_user,
    }
    if not has_user:
        out["error"] = "borg-cyrus restore user is not available"
        return out
    staging = os.path.join(bed.data, ".restore-staging")
    raw_dir = os.path.join(bed.data, ".raw-extract")
    raw, rest, ok = [], [], []
    for k in range(reps):
        shutil.rmtree(raw_dir, ignore_errors=True)
        os.makedirs(raw_dir)
        r = timed(["borg", "extract", f"{repo}::{archive}", *[p.lstrip("/") for p in paths]], env_=env(), cwd=raw_dir)
        raw.append(r.seconds)
        shutil.rmtree(raw_dir, ignore_errors=True)

        delete_user(sb, user)
        shutil.rmtree(staging, ignore_errors=True)
        r = timed(
            ["borg-cyrus", "-c", bc, "restore", "user", user, "--borgmatic-config", cfg, "--staging", staging],
            env_=env(),
            check=False,
        )
        if r.returncode:
            out["error"] = f"restore user failed ({r.returncode}): {(r.stderr or r.stdout)[-1500:]}"
            break
        rest.append(r.seconds)
        boxes, msgs = imap_counts(sb, user)
        ok.append(boxes == info["mailboxes"] and msgs == info["messages"])
        log(
            f"    #{k + 1}: raw borg extract {raw[-1]:.2f} s, borg-cyrus restore user {rest[-1]:.2f} s; "
            f"IMAP sees {boxes}/{info['mailboxes']} mailboxes, {msgs}/{info['messages']} messages"
        )
    out.update(
        raw_s=raw,
        restore_s=rest,
        raw_median=median(raw),
        restore_median=median(rest),
        ratio=ratio(median(rest), median(raw)),
        verified=ok,
    )
    if not out.get("error"):
        out["folder"] = folder_restore(bed, sb, bc, cfg, repo, archive, m, info, reps, staging, raw_dir)
        out["narrowing"] = narrowing(repo, archive, os.path.join(work, "dump"), paths, reps)
        if find:
            out["find"] = find_cost(bed, bc, cfg, repo, user, reps)
    return out


def folder_restore(bed, sb, bc, cfg, repo, archive, m, info, reps, staging, raw_dir):
    """`restore mailbox` of the user's largest folder --into a new one, against a raw extract of its directory."""
    name, e = max(info["boxes"].items(), key=lambda kv: (kv[1].get("messages") or 0, kv[0]))
    u = e["uniqueid"]
    path = os.path.join(m["layout"]["partitions"][e.get("partition") or "default"], "uuid", u[0], u[1], u)
    admin = "/".join(name.split("."))
    raw, rest = [], []
    for k in range(reps):
        shutil.rmtree(raw_dir, ignore_errors=True)
        os.makedirs(raw_dir)
        raw.append(timed(["borg", "extract", f"{repo}::{archive}", path.lstrip("/")], env_=env(), cwd=raw_dir).seconds)
        shutil.rmtree(raw_dir, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        into = "/".join(admin.split("/")[:2]) + f"/bench-restore-{k}-{os.getpid()}"  # a new folder of the owner
        argv = ["borg-cyrus", "-c", bc, "restore", "mailbox", admin, "--into", into, "--borgmatic-config", cfg]
        rest.append(timed([*argv, "--staging", staging], env_=env()).seconds)
    return {
        "mailbox": admin,
        "messages": e.get("messages"),
        "bytes": e.get("bytes"),
        "raw_median": median(raw),
        "restore_median": median(rest),
        "ratio": ratio(median(rest), median(raw)),
    }


def find_cost(bed, bc, cfg, repo, user, reps):
    """`restore find --user` over 1 and 3 archives (two more nightly runs of the unchanged spool)."""
    argv = ["borg-cyrus", "-c", bc, "restore", "find", "--user", user, "--since", "2000-01-01"]
    argv += ["--subject", "zz-no-such-subject", "--borgmatic-config", cfg]
    out = {}
    for n in (1, 3):
        while len(sh("borg", "list", "--short", repo, env=env()).stdout.split()) < n:
            bed.borgmatic(cfg, bc_config=bc)
        last = sh("borg", "list", "--short", repo, env=env()).stdout.split()[-n]
        since = sh("borg", "info", "--json", f"{repo}::{last}", env=env()).stdout
        import json as _json

        start = _json.loads(since)["archives"][0]["start"]
        runs = [timed([*argv, "--archives-since", start], env_=env(), check=False).seconds for _ in range(reps)]
        out[n] = median(runs)
    return {"archives_1": out[1], "archives_3": out[3], "per_archive": (out[3] - out[1]) / 2}


def _helper_walks(repo, archive, requests):
    """The one-pass reader (borg_cyrus/restore/onepass.py) driven directly:
    [(seconds, stopped early)] for starting it and for each request."""
    import json as _json
    import subprocess
    import sys
    import tempfile
    import time

    out = []
    t = time.monotonic()
    p = subprocess.Popen(
        [sys.executable, "-m", "borg_cyrus.restore.onepass"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env({"BORG_EXIT_CODES": "modern"}),
    )
    p.stdin.write((_json.dumps({"args": ["--archive", archive, "--", repo]}) + "\n").encode())
    p.stdin.flush()
    hello = _json.loads(p.stdout.readline())
    assert hello.get("archive") == archive, hello
    out.append((time.monotonic() - t, False))
    with tempfile.TemporaryDirectory(dir=os.path.dirname(repo)) as dest:
        for paths in requests:
            t = time.monotonic()
            p.stdin.write((_json.dumps({"paths": paths, "dest": dest}) + "\n").encode())
            p.stdin.flush()
            reply = _json.loads(p.stdout.readline())
            assert reply.get("done"), reply
            out.append((time.monotonic() - t, reply.get("stopped")))
        p.stdin.close()
        p.wait()
    return out


def narrowing(repo, archive, dump_dir, paths, reps):
    """How far reading an archive can be narrowed: borg's command line (the
    newest archive, the dump, the paths: three walks) against one borg
    process that stops each walk where what it asked for ends."""
    rows = {k: [] for k in ("list", "cli_dump", "cli_paths", "start", "dump", "paths")}
    stopped = {"dump": [], "paths": []}
    for _ in range(reps):
        rows["list"].append(timed(["borg", "list", "--json", repo], env_=env()).seconds)
        for key, what in (("cli_dump", [dump_dir]), ("cli_paths", paths)):
            d = os.path.join(os.path.dirname(repo), f".narrow-{key}")
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            argv = ["borg", "extract", f"{repo}::{archive}", *[p.lstrip("/") for p in what]]
            rows[key].append(timed(argv, env_=env(), cwd=d, check=False).seconds)
            shutil.rmtree(d, ignore_errors=True)
        (start, _), (dump, sd), (user, su) = _helper_walks(repo, archive, [[dump_dir], paths])
        rows["start"].append(start)
        rows["dump"].append(dump)
        rows["paths"].append(user)
        stopped["dump"].append(sd)
        stopped["paths"].append(su)
    out = {k: median(v) for k, v in rows.items()}
    out["stopped"] = {k: all(v) for k, v in stopped.items()}
    out["cli_total"] = out["list"] + out["cli_dump"] + out["cli_paths"]
    out["onepass_total"] = out["start"] + out["dump"] + out["paths"]
    return out
