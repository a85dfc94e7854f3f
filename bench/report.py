"""Tables (printed) and docs/benchmarks.md + PNG plots from a results dict."""

import os
import re

from bench.common import median

TARGETS = {
    "btrfs_window": 0.1,
    "lvm_window": 1.0,
    "nightly_ratio": 1.1,
    "lvm_speedup": 10.0,
    "before_10k": 2.0,
}


NIGHTLY_ORDER = ("plain", "borgmatic", "borg-cyrus", "borg-cyrus-nocheck", "borgmatic-btrfs", "borgmatic-lvm")
BLOCKED_ORDER = ("live", "stop-master", "rsync-staging", "btrfs+stop", "btrfs", "xfs+fsfreeze", "lvm")


def ordered(keys, order):
    keys = list(keys)
    return [k for k in order if k in keys] + [k for k in keys if k not in order]


# -- formatting ----------------------------------------------------------------


def s(x, digits=2):
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f} s"
    return f"{x:.{digits}f} s"


def ms(x):
    if x is None:
        return "–"
    if x < 1:
        return f"{x * 1000:.0f} ms"
    return f"{x:.2f} s"


def rx(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}×"


def mb(nbytes):
    if not nbytes:
        return "–"
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.0f} MB"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def verdict(ok):
    return "–" if ok is None else ("**met**" if ok else "**missed**")


# -- headline --------------------------------------------------------------------


def headline(results):
    sec = results.get("sections", {})
    rows = []
    bl = sec.get("blocked") or {}
    m = (bl.get("modes") or {}).get("btrfs")
    if m:
        live = (bl.get("modes") or {}).get("live") or {}
        rows.append(
            (
                "write-blocked window, `btrfs`",
                "≤ 0.1 s",
                f"LMTP gap {ms(m['lmtp_gap'])} (live floor {ms(live.get('lmtp_gap'))}); append gap "
                f"{ms(m['append_gap'])}; borg-cyrus's own measure {ms(m['blocked_seconds'])}",
                verdict(
                    m["append_gap"] is not None
                    and m["append_gap"] <= TARGETS["btrfs_window"]
                    and (m["blocked_seconds"] or 0) <= TARGETS["btrfs_window"]
                ),
            )
        )
    lv = _lvm_blocked(results)
    if lv:
        rows.append(
            (
                "write-blocked window, `lvm` (TCG VM)",
                "≤ 1 s",
                f"LMTP gap {ms(lv['lmtp_gap'])} (live floor {ms(lv.get('live_gap'))}); append gap "
                f"{ms(lv['append_gap'])}; borg-cyrus's own measure {ms(lv['blocked_seconds'])}",
                verdict(
                    lv["append_gap"] is not None
                    and lv["append_gap"] <= TARGETS["lvm_window"]
                    and (lv["blocked_seconds"] or 0) <= TARGETS["lvm_window"]
                ),
            )
        )
    for n in sec.get("nightly") or []:
        bc = n["rows"].get("borg-cyrus", {})
        nc = n["rows"].get("borg-cyrus-nocheck", {})
        bm = n["rows"].get("borgmatic", {})
        rows.append(
            (
                f"unchanged nightly run vs plain `borg create`, {n['scale']} ({n.get('spool_messages')} messages)",
                "≤ 1.1×",
                f"{rx(bc.get('ratio'))} ({s(bc.get('second_median'))} vs {s(n['rows']['plain'].get('second_median'))}); "
                f"borgmatic alone {rx(bm.get('ratio'))}, borg-cyrus without borgmatic's path check "
                f"{rx(nc.get('ratio'))}",
                verdict(bc.get("ratio") is not None and bc["ratio"] <= TARGETS["nightly_ratio"]),
            )
        )
    for name, sp in (_lvm_nightly(results) or {}).items():
        bc = sp["rows"].get("borg-cyrus", {})
        bm = sp["rows"].get("borgmatic-lvm", {})
        sp_up = (
            (bm.get("second_median") / bc["second_median"])
            if bc.get("second_median") and bm.get("second_median")
            else None
        )
        rows.append(
            (
                f"LVM unchanged run, borgmatic `lvm:` ÷ borg-cyrus `lvm`, spool {name} ({mb(sp.get('spool_bytes'))})",
                "≥ 10×",
                f"{rx(sp_up, 1)} ({s(bm.get('second_median'))} vs {s(bc.get('second_median'))}; files re-read "
                f"{bm.get('changed_files') or 0:.0f} vs {bc.get('changed_files') or 0:.0f})",
                verdict(sp_up is not None and sp_up >= TARGETS["lvm_speedup"]),
            )
        )
    an = (sec.get("lvm") or {}).get("analog") or {}
    if an.get("ratio"):
        rows.append(
            (
                f"same comparison on the host at real size: stable vs random snapshot mount path, "
                f"{an['scale']} ({an.get('spool_messages')} messages, {mb(an.get('spool_bytes'))})",
                "≥ 10×",
                f"{rx(an['ratio'], 1)} ({s(an['random_median'])} vs {s(an['stable_median'])}; files read "
                f"{median(an['random_changed']):.0f} vs {median(an['stable_changed']):.0f})",
                verdict(an["ratio"] >= TARGETS["lvm_speedup"]),
            )
        )
    sc = sec.get("scaling") or {}
    pts = {p["scale"]: p for p in sc.get("points", [])}
    p10 = pts.get("mb10k")
    if p10:
        x10 = pts.get("mb10k-x10")
        lin = _linearity(sc)
        rows.append(
            (
                "`before` at 10k mailboxes",
                "≤ 2 s, O(mailboxes)",
                f"{s(p10['before_s'])}, peak RSS {p10['self_mb']:.0f} MB"
                + (f"; 10× the messages: {rx(x10['before_s'] / p10['before_s'])} the time" if x10 else "")
                + (f"; {lin}" if lin else ""),
                verdict(p10["before_s"] <= TARGETS["before_10k"]),
            )
        )
    if sec.get("userdbs"):
        from bench import userdbs

        rows.append(userdbs.headline_row(sec["userdbs"], s, TARGETS["before_10k"]))
    if sec.get("hourly"):
        from bench import hourly

        rows.extend(hourly.headline_rows(sec["hourly"], s))
    rs = sec.get("restore") or {}
    for r in (rs, rs.get("large") or {}):
        if not r.get("raw_median"):
            continue
        rows.append(
            (
                f"single-user restore, {r.get('scale')} ({r['user']}: {r['user_mailboxes']} mailboxes, "
                f"{r['user_messages']} messages, {mb(r['user_bytes'])})",
                "≤ 1.5× a raw extract",
                f"`restore user` {s(r['restore_median'])} = {rx(r['ratio'], 1)} a raw `borg extract` of "
                f"the same directories ({s(r['raw_median'])})",
                "**met**" if (r.get("ratio") or 99) <= 1.5 else "**missed**",
            )
        )
        f = r.get("folder")
        if f:
            rows.append(
                (
                    f"single-folder restore, {r.get('scale')} ({f['mailbox']}: {f['messages']} messages, "
                    f"{mb(f['bytes'])})",
                    "≤ 1.5× a raw extract",
                    f"`restore mailbox --into` {s(f['restore_median'])} = {rx(f['ratio'], 1)} ({s(f['raw_median'])})",
                    "**met**" if (f.get("ratio") or 99) <= 1.5 else "**missed**",
                )
            )
    return table(["target", "goal", "measured (medians, same run)", ""], rows)


def _linearity(sc):
    """Marginal cost per 1,000 mailboxes between consecutive points of the sweep."""
    pts = sorted(
        [p for p in sc.get("points", []) if "-x" not in p["scale"] and p.get("mailboxes")], key=lambda p: p["mailboxes"]
    )
    if len(pts) < 2:
        return ""
    parts = []
    for a, b in zip(pts, pts[1:]):
        per_k = (b["before_s"] - a["before_s"]) / (b["mailboxes"] - a["mailboxes"]) * 1000
        parts.append(
            f"{per_k * 1000:.0f} ms per 1,000 mailboxes from {a['mailboxes'] // 1000}k to {b['mailboxes'] // 1000}k"
        )
    return "marginal cost " + ", ".join(parts)


def _lvm_nightly(results):
    lvm = (results.get("sections") or {}).get("lvm") or {}
    return {k: v["nightly"] for k, v in (lvm.get("spools") or {}).items() if v.get("nightly")}


def _lvm_blocked(results):
    lvm = (results.get("sections") or {}).get("lvm") or {}
    for v in (lvm.get("spools") or {}).values():
        bl = v.get("blocked")
        if bl and bl.get("modes", {}).get("lvm"):
            d = dict(bl["modes"]["lvm"])
            d["live_gap"] = bl["modes"].get("live", {}).get("lmtp_gap")
            return d
    return None


# -- sections ---------------------------------------------------------------------


def blocked_table(bl):
    rows = []
    idle = bl.get("idle") or {}
    rows.append(("idle server, no backup", ms(idle.get("lmtp_gap")), "", ms(idle.get("append_gap")), "", "–", "–", "–"))
    for name in ordered(bl["modes"], BLOCKED_ORDER):
        m = bl["modes"][name]
        lo, hi = m.get("lmtp_gap_range") or (None, None)
        alo, ahi = m.get("append_gap_range") or (None, None)
        rows.append(
            (
                m["desc"],
                ms(m["lmtp_gap"]),
                f"{ms(lo)} – {ms(hi)}",
                ms(m["append_gap"]),
                f"{ms(alo)} – {ms(ahi)}",
                ms(m["blocked_seconds"]),
                f"{m['lmtp_failed']:.0f}" if m.get("lmtp_failed") is not None else "–",
                s(m["seconds"], 1) + (f" ({len(m['failed_runs'])} backup(s) failed)" if m.get("failed_runs") else ""),
            )
        )
    return table(
        [
            "mode",
            "LMTP gap (median)",
            "range",
            "append gap (median)",
            "range",
            "borg-cyrus's own measure",
            "failed deliveries",
            "backup took",
        ],
        rows,
    )


def nightly_table(n):
    rows = []
    for row in ordered(n.get("row_desc") or n["rows"], NIGHTLY_ORDER):
        d = n["rows"].get(row, {})
        rows.append(
            (
                n.get("row_desc", {}).get(row, row),
                s(d.get("first_s")),
                rx(d.get("first_ratio")),
                s(d.get("second_median")),
                rx(d.get("ratio")),
                "–" if d.get("changed_files") is None else f"{d['changed_files']:.0f}",
                s(d.get("before_s")) if d.get("before_s") is not None else "–",
                s(d.get("after_s")) if d.get("after_s") is not None else "–",
            )
        )
    return table(
        [
            "method",
            "first run",
            "× plain",
            f"unchanged run (median of {n['reps']})",
            "× plain",
            "files read again",
            "`before` hook",
            "`after` hook",
        ],
        rows,
    )


def scaling_table(sc):
    rows = []
    for p in sc.get("points", []):
        t = p.get("timings", {})
        rows.append(
            (
                p["scale"],
                p["mailboxes"],
                p["messages"],
                s(p["before_s"]),
                f"{p['self_mb']:.0f} MB",
                s(t.get("freeze")),
                s(t.get("dumps")),
                s(t.get("counts")),
                s(t.get("excludes")),
                s(p.get("after_s")),
            )
        )
    return table(
        [
            "spool",
            "mailboxes",
            "messages",
            "`before` (median)",
            "peak RSS (VmHWM)",
            "freeze",
            "dumps",
            "counts",
            "excludes",
            "`after`",
        ],
        rows,
    )


def profile_block(prof, min_frac=0.03, max_lines=45):
    text = prof.get("text") or ""
    lines = text.splitlines()
    total = None
    for ln in lines:
        m = re.search(r"Duration:\s+([0-9.]+)", ln)
        if m:
            total = float(m.group(1))
    keep = []
    for ln in lines:
        m = re.match(r"^[\s│├└─]*([0-9.]+)\s", ln)
        if m and total and float(m.group(1)) >= min_frac * total:
            keep.append(ln)
    return "\n".join(keep[:max_lines])


# -- plots --------------------------------------------------------------------------


def plots(results, outdir, prefix="bench-"):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    made = {}
    sec = results.get("sections", {})
    bl = sec.get("blocked")
    if bl and bl.get("modes"):
        names = ordered(bl["modes"], BLOCKED_ORDER)
        fig, ax = plt.subplots(figsize=(8, 3.8))
        ys = range(len(names))
        lmtp = [bl["modes"][n]["lmtp_gap"] or 0 for n in names]
        app = [bl["modes"][n]["append_gap"] or 0 for n in names]
        own = [bl["modes"][n]["blocked_seconds"] or 0 for n in names]
        ax.barh([y + 0.27 for y in ys], lmtp, height=0.26, label="LMTP delivery gap (client view)")
        ax.barh(list(ys), app, height=0.26, label="append gap (filesystem)")
        ax.barh([y - 0.27 for y in ys], own, height=0.26, label="borg-cyrus blocked_seconds")
        lv = _lvm_blocked(results)
        ax.axvline(0.1, color="k", ls="--", lw=0.8)
        ax.text(0.1, len(names) - 0.5, " 0.1 s", fontsize=8)
        if bl.get("idle"):
            ax.axvline(bl["idle"]["lmtp_gap"], color="grey", ls=":", lw=0.8)
        ax.set_yticks(list(ys))
        ax.set_yticklabels(names)
        ax.set_xscale("log")
        ax.set_xlabel("longest write gap during the backup (s, log scale; median of runs)")
        ax.set_title(
            f"Write-blocked window per backup ({bl['scale']} spool)"
            + (f"; lvm in the VM: {ms(lv['append_gap'])}" if lv else ""),
            fontsize=10,
        )
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = os.path.join(outdir, prefix + "blocked.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made["blocked"] = os.path.basename(path)
    ni = sec.get("nightly")
    if ni:
        rows = ["borgmatic", "borg-cyrus", "borg-cyrus-nocheck", "borgmatic-btrfs"]
        labels = {
            "borgmatic": "borgmatic, no hooks",
            "borg-cyrus": "borgmatic + borg-cyrus btrfs",
            "borg-cyrus-nocheck": "… without borgmatic's path check",
            "borgmatic-btrfs": "borgmatic btrfs: hook",
        }
        fig, ax = plt.subplots(figsize=(8, 3.8))
        w = 0.8 / len(rows)
        for i, row in enumerate(rows):
            vals = [n["rows"].get(row, {}).get("ratio") or 0 for n in ni]
            ax.bar([k + (i - len(rows) / 2 + 0.5) * w for k in range(len(ni))], vals, width=w, label=labels[row])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.1, color="k", ls="--", lw=0.8)
        ax.set_xticks(range(len(ni)))
        ax.set_xticklabels([f"{n['scale']}\n{n.get('spool_messages')} msgs, {mb(n.get('spool_bytes'))}" for n in ni])
        ax.set_ylabel("unchanged run ÷ plain borg create")
        ax.set_title("Nightly cost on btrfs, unchanged spool (1.0 = plain borg create of the live dirs)", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(outdir, prefix + "nightly.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made["nightly"] = os.path.basename(path)
    sc = sec.get("scaling")
    if sc and sc.get("points"):
        pts = [p for p in sc["points"] if p.get("mailboxes")]
        sw = sorted([p for p in pts if "-x" not in p["scale"]], key=lambda p: p["mailboxes"])
        xs = [p for p in pts if "-x" in p["scale"]]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([p["mailboxes"] for p in sw], [p["before_s"] for p in sw], "o-", label="before: time (1 msg/mailbox)")
        for p in xs:
            ax.plot([p["mailboxes"]], [p["before_s"]], "s", color="C3", label=f"before: time, {p['messages']} messages")
        if sc.get("fit"):
            f = sc["fit"]
            lo, hi = sw[0]["mailboxes"], sw[-1]["mailboxes"]
            grid = [lo * (hi / lo) ** (i / 30) for i in range(31)]
            ax.plot(
                grid,
                [f["fixed_s"] + f["per_1k_mailboxes_s"] * g / 1000 for g in grid],
                ":",
                color="grey",
                label=f"linear fit: {f['fixed_s']:.2f} s + {f['per_1k_mailboxes_s'] * 1000:.1f} ms/1k mailboxes",
            )
        ax.axhline(2.0, color="k", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("mailboxes")
        ax.set_ylabel("`borg-cyrus before` (s)")
        ax2 = ax.twinx()
        ax2.plot(
            [p["mailboxes"] for p in sw],
            [p["self_mb"] for p in sw],
            "^--",
            color="C2",
            alpha=0.7,
            label="peak RSS of `before` (MB)",
        )
        ax2.set_ylabel("peak RSS (MB)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
        ax.set_title("`before` (mode btrfs) against the number of mailboxes", fontsize=10)
        fig.tight_layout()
        path = os.path.join(outdir, prefix + "before-scaling.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made["scaling"] = os.path.basename(path)
    return made


# -- the document ------------------------------------------------------------------


def tables(results):
    out = []
    sec = results.get("sections", {})
    out.append("HEADLINE\n" + headline(results))
    if sec.get("blocked"):
        out.append(f"WRITE-BLOCKED WINDOW ({sec['blocked']['scale']})\n" + blocked_table(sec["blocked"]))
    for n in sec.get("nightly") or []:
        out.append(f"NIGHTLY COST btrfs, {n['scale']}\n" + nightly_table(n))
    for name, n in (_lvm_nightly(results) or {}).items():
        out.append(f"LVM (VM), {name}\n" + nightly_table(n))
    lvm = sec.get("lvm") or {}
    for name, v in (lvm.get("spools") or {}).items():
        if v.get("blocked"):
            out.append(f"LVM WRITE-BLOCKED WINDOW (VM), {name}\n" + blocked_table(v["blocked"]))
    if sec.get("scaling"):
        out.append("BEFORE SCALING\n" + scaling_table(sec["scaling"]))
    if sec.get("userdbs"):
        u = sec["userdbs"]
        out.append(
            f"BEFORE AT 10K USERS ({u['mailboxes']} mailboxes): with the database dumps {s(u['with']['before_s'])}, "
            f"without {s(u['without']['before_s'])}, added {s(u['added_s'])}"
        )
    if sec.get("hourly"):
        h = sec["hourly"]
        out.append(
            f"HOURLY AT {h['mailboxes']} MAILBOXES: before --dumps-only {s(h['dumps_only_s'])}, borgmatic create "
            f"{s(h['create_s'])}, repository +{h['growth_bytes'] / 1e3:.0f} kB per run"
        )
    if sec.get("restore"):
        r = sec["restore"]
        out.append(
            f"RESTORE {r.get('user')}: restore user {s(r.get('restore_median'))}, raw extract "
            f"{s(r.get('raw_median'))}, ratio {rx(r.get('ratio'))}"
        )
    errs = dict(results.get("errors") or {})
    errs.update({f"lvm/{k}": v for k, v in (lvm.get("errors") or {}).items()})
    if lvm.get("error"):
        errs["lvm"] = lvm["error"]
    if errs:
        out.append("ERRORS\n" + "\n".join(f"{k}: {v[:500]}" for k, v in errs.items()))
    return "\n\n".join(out)


def write(results, path):
    outdir = os.path.dirname(os.path.abspath(path))
    os.makedirs(outdir, exist_ok=True)
    pics = plots(results, outdir)
    from bench import narrative

    text = narrative.document(results, pics)
    with open(path, "w") as f:
        f.write(text)
    return path


def spool_rows(results):
    seen = {}
    sec = results.get("sections", {})
    for n in sec.get("nightly") or []:
        seen[n["scale"]] = (n["scale_desc"], n.get("spool_mailboxes"), n.get("spool_messages"), n.get("spool_bytes"))
    for p in (sec.get("scaling") or {}).get("points", []):
        seen.setdefault(p["scale"], (p["scale_desc"], p.get("mailboxes"), p.get("messages"), None))
    for name, n in (_lvm_nightly(results) or {}).items():
        seen.setdefault(
            name, (n["scale_desc"], n.get("spool_mailboxes"), n.get("spool_messages"), n.get("spool_bytes"))
        )
    return [(k, *v) for k, v in seen.items()]


def ratio_of_medians(a, b):
    a, b = median(a), median(b)
    return None if not a or not b else a / b


def profile_tree(prof):
    """(total, [(seconds, function, where, [(seconds, function, where), ...]), ...]): the phases of `before`
    (children of the deepest frame that still holds >= 90 % of the run) and their heaviest children
    (looking through frames that only pass the time on to one callee)."""
    text = prof.get("text") or ""
    nodes = []
    for ln in text.splitlines():
        m = re.match(r"^([\s│├└─]*)([0-9.]+)\s+(\S+)\s+(.+)$", ln)
        if m:
            nodes.append((len(m.group(1)) // 3, float(m.group(2)), m.group(3), m.group(4).strip()))
    if not nodes:
        return None, []
    total = nodes[0][1]

    def children(i):
        d = nodes[i][0]
        out = []
        k = i + 1
        while k < len(nodes) and nodes[k][0] > d:
            if nodes[k][0] == d + 1:
                out.append(k)
            k += 1
        return out

    def descend(i):
        """Follow the single child that holds >= 90 % of a frame's time."""
        while True:
            big = [k for k in children(i) if nodes[k][1] >= 0.9 * nodes[i][1]]
            if len(big) != 1:
                return i
            i = big[0]

    i = descend(0)
    phases = []
    for j in children(i):
        if nodes[j][1] < 0.03 * total:
            continue
        top = descend(j)
        kids = sorted((nodes[k] for k in children(top) if nodes[k][1] >= 0.03 * total), key=lambda n: -n[1])
        phases.append((nodes[j][1], nodes[j][2], nodes[j][3], [(k[1], k[2], k[3]) for k in kids[:4]]))
    return total, phases
