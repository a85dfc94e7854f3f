"""`borg-cyrus doctor`: what was discovered, what would be backed up, problems."""

import json
import os
import re
import shutil
import tempfile

from borg_cyrus.cyrus import layout as layout_mod
from borg_cyrus.backup import patterns
from borg_cyrus.backup import busy
from borg_cyrus.backup.run import last_recovery, plan_locations
from borg_cyrus.restore.dump import live_cyrus_version
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.model import View, nest_free
from borg_cyrus.cyrus.service import Service


def borg_version(ctx):
    borg = shutil.which("borg")
    if not borg:
        return None, "borg is not on PATH; install borgbackup >= 1.4"
    r = ctx.run([borg, "--version"], changes=False, check=False)
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", r.text)
    if not m:
        return None, f"cannot tell borg's version from {r.text.strip()!r}"
    v = tuple(int(x) for x in m.groups())
    problem = (
        None
        if v >= (1, 4, 0)
        else f"borg {'.'.join(map(str, v))} is too old: snapshot modes need >= 1.4 (slashdot paths)"
    )
    return ".".join(map(str, v)), problem


def gather(ctx):
    lay = ctx.layout
    problems = []
    info = {"config": ctx.config.path, "mode": ctx.config["mode"], "layout": lay.to_json()}
    info["tools"] = {"directory": ctx.tools.directory, "found": sorted(ctx.tools.paths)}
    for name in ctx.tools.missing(layout_mod.REQUIRED_TOOLS):
        problems.append(f"required Cyrus tool {name} not found (set cyrus_tools_directory)")
    for name in ctx.tools.missing(layout_mod.RESTORE_TOOLS):
        problems.append(f"restore tool {name} not found: restores will fail")
    info["cyrus_version"] = live_cyrus_version(ctx)
    info["borg_version"], p = borg_version(ctx)
    if p:
        problems.append(p)
    problems.extend(busy.left_behind(ctx))
    recovered = last_recovery(ctx)  # a dead run the next one cleaned up after: say so until a backup completes
    if recovered:
        problems.append(recovered)
    svc = Service(ctx.config["service"], ctx.runner)
    info["service"] = {"manager": svc.manager, "how": svc.describe(), "running": svc.is_running()}
    info["notes"] = []
    if svc.manager != "systemd" and os.path.isdir("/run/systemd/system"):
        info["notes"].append(
            f"systemd runs this host but service.manager is {svc.manager}: borg-cyrus starts "
            "Cyrus outside systemd's control (it moves the master out of the backup's control "
            "group); prefer service.manager: systemd"
        )
    try:
        locs = plan_locations(ctx)
    except BorgCyrusError as e:
        problems.append(str(e))
        locs = [loc for loc in ctx.plugins.locations(ctx) if loc.kind == "dump" or os.path.lexists(loc.path)]
    info["locations"] = [{"path": loc.path, "kind": loc.kind, "what": loc.what} for loc in locs]
    view = View(imapd_conf=lay.imapd_conf, layout=lay)
    tmp = tempfile.mkdtemp(prefix="borg-cyrus-doctor-")
    mailboxes = None
    try:
        if not ctx.tools.missing(layout_mod.REQUIRED_TOOLS):
            try:
                mailboxes = ctx.plugins.mailbox_list(ctx, view, tmp).mailboxes
            except BorgCyrusError as e:
                problems.append(f"mailbox list: {e}")
        excludes = ctx.plugins.excludes(ctx, view, mailboxes or [])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info["mailboxes"] = len(mailboxes) if mailboxes is not None else None
    info["excluded_mailboxes"] = sorted({e.mailbox for e in excludes if e.mailbox})
    info["excludes"] = [{"path": e.path, "regex": e.regex, "reason": e.reason} for e in excludes]
    info["rules"] = rule_summary(ctx, view, mailboxes, problems)
    info["patterns"] = patterns.render(nest_free([loc.path for loc in locs]), excludes, view)
    info["problems"] = problems
    return info


def rule_summary(ctx, view, mailboxes, problems):
    """What `exclude.rules` would leave out now: per rule count, bytes, first mailboxes."""
    if not ctx.config["exclude"].get("rules") or mailboxes is None:
        return []
    from borg_cyrus.backup import excludes as excludes_mod, rules

    try:
        sel = excludes_mod.rule_selection(ctx, view, mailboxes)
    except BorgCyrusError as e:
        problems.append(f"exclude.rules: {e}")
        return []
    out = []
    for r in rules.per_rule(sel):
        out.append(dict(r, mailboxes=r["mailboxes"][:5], mailbox_count=len(r["mailboxes"])))
    for name, problem in sel.unreadable:
        problems.append(f"exclude.rules: {name}: {problem}; its messages stay in the backup")
    return out


def doctor(ctx, as_json=False):
    info = gather(ctx)
    if as_json:
        print(json.dumps(info, indent=2))
        return 1 if info["problems"] else 0
    lay = info["layout"]
    print(f"config        {info['config']} (mode {info['mode']})")
    print(f"imapd.conf    {lay['imapd_conf']}")
    print(f"configdir     {lay['configdirectory']}")
    for kind in ("partitions", "metapartitions", "archivepartitions", "searchpartitions"):
        for name, path in sorted(lay[kind].items()):
            print(f"{kind[:-1]:13} {name}: {path}")
    print(f"sievedir      {lay['sievedir']}")
    print(f"tools         {info['tools']['directory'] or 'NOT FOUND'}")
    print(f"cyrus         {info['cyrus_version'] or 'version unknown (no cyr_info)'}")
    print("databases     " + ", ".join(f"{k} {v['backend']}" for k, v in sorted(lay["databases"].items())))
    print(f"borg          {info['borg_version'] or 'NOT FOUND'}")
    svc = info["service"]
    print(f"service       {svc['how']} ({'running' if svc['running'] else 'not running'})")
    print(
        f"mailboxes     {info['mailboxes'] if info['mailboxes'] is not None else '?'}"
        f" ({len(info['excluded_mailboxes'])} with messages excluded)"
    )
    print("\nbacked up:")
    for loc in info["locations"]:
        print(f"  {loc['path']}  [{loc['what']}]")
    print("\nexcluded:")
    for ex in info["excludes"]:
        rx = ex["regex"] if not ex["regex"] or len(ex["regex"]) <= 80 else ex["regex"][:77] + "…"
        print(f"  {ex['path']}{'/' + rx if rx else ''}  [{ex['reason']}]")
    if info["rules"]:
        from borg_cyrus.restore.listing import human_size

        print("\nsize/age rules (what a backup now would leave out):")
        for r in info["rules"]:
            more = r["mailbox_count"] - len(r["mailboxes"])
            shown = ", ".join(r["mailboxes"]) + (f" and {more} more" if more > 0 else "")
            print(
                f"  {r['rule']}: {r['messages']} message(s), {human_size(r['bytes'])} in "
                f"{r['mailbox_count']} mailbox(es){': ' + shown if shown else ''}"
            )
    for note in info["notes"]:
        print(f"\nnote: {note}")
    if info["problems"]:
        print("\nproblems:")
        for p in info["problems"]:
            print(f"  - {p}")
        return 1
    print("\nno problems found")
    return 0
