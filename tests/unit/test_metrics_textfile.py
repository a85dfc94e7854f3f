"""Metrics: the textfile (rendering, atomic replacement, parsed back by
prometheus_client) and the state that keeps every command's values."""

import json
import os
import stat
import types

import pytest
from prometheus_client.parser import text_string_to_metric_families

from borg_cyrus.errors import BorgCyrusError, SkipError
from borg_cyrus.tools import metrics


def ctx_for(tmp_path, textfile=True, dry_run=False):
    prom = str(tmp_path / "prom" / "borg-cyrus.prom")
    os.makedirs(os.path.dirname(prom), exist_ok=True)
    return types.SimpleNamespace(
        config={"metrics": {"textfile": prom if textfile else None}},
        work_dir=str(tmp_path / "work"),
        dry_run=dry_run,
    )


def parse(path):
    with open(path) as f:
        text = f.read()
    out = {}
    for fam in text_string_to_metric_families(text):
        assert fam.type == "gauge" and fam.documentation, fam.name
        for s in fam.samples:
            out[(s.name, s.labels.get("command"))] = s.value
    return out


MANIFEST = {
    "mode": "btrfs",
    "blocked_seconds": 0.0042,
    "counts": {"mailboxes": 19, "messages": 31, "bytes": 12345},
    "excluded_mailboxes": ["user.alice.Junk", "user.dave.Junk"],
    "excluded_messages": {"totals": {"mailboxes": 1, "messages": 3, "bytes": 999}},
    "problems": ["one finding"],
}


def backup(ctx, fail_before=None, fail_after=None, failed=False, as_json=False):
    try:
        with metrics.Before(ctx) as run:
            if fail_before:
                raise fail_before
            run.ready({"manifest": MANIFEST})
    except BorgCyrusError:
        pass
    try:
        with metrics.After(ctx, failed=failed, as_json=as_json):
            if fail_after:
                raise fail_after
    except BorgCyrusError:
        pass


def test_successful_backup_renders_every_value(tmp_path):
    ctx = ctx_for(tmp_path)
    backup(ctx)
    v = parse(ctx.config["metrics"]["textfile"])
    assert v[("borg_cyrus_last_run_success", "backup")] == 1
    assert (
        v[("borg_cyrus_last_success_timestamp_seconds", "backup")]
        == v[("borg_cyrus_last_run_end_timestamp_seconds", "backup")]
    )
    assert v[("borg_cyrus_backup_mailboxes", None)] == 19
    assert v[("borg_cyrus_backup_messages", None)] == 31
    assert v[("borg_cyrus_backup_bytes", None)] == 12345
    assert v[("borg_cyrus_backup_excluded_mailboxes", None)] == 2
    assert v[("borg_cyrus_backup_excluded_messages", None)] == 3
    assert v[("borg_cyrus_backup_consistency_findings", None)] == 1
    assert v[("borg_cyrus_backup_write_blocked_seconds", None)] == pytest.approx(0.004)
    assert stat.S_IMODE(os.stat(ctx.config["metrics"]["textfile"]).st_mode) == 0o644


def test_failures_keep_the_last_success_and_other_commands(tmp_path):
    ctx = ctx_for(tmp_path)
    prom = ctx.config["metrics"]["textfile"]
    backup(ctx)
    with metrics.Run(ctx, "verify") as run:
        run.conclude(True, mailboxes=19, messages=31, failed_mailboxes=0)
    ok = parse(prom)
    backup(ctx, fail_before=BorgCyrusError("extra path missing"))  # `after` still runs, finds the failure
    v = parse(prom)
    assert v[("borg_cyrus_last_run_success", "backup")] == 0
    key = ("borg_cyrus_last_success_timestamp_seconds", "backup")
    assert v[key] == ok[key] < v[("borg_cyrus_last_run_end_timestamp_seconds", "backup")]
    assert v[("borg_cyrus_last_run_success", "verify")] == 1  # another command's values are kept
    assert v[("borg_cyrus_verify_mailboxes", None)] == 19
    backup(ctx, failed=True)  # borgmatic's `states: [fail]` hook
    assert parse(prom)[("borg_cyrus_last_run_success", "backup")] == 0
    backup(ctx, fail_after=BorgCyrusError("could not undo"))
    assert parse(prom)[("borg_cyrus_last_run_success", "backup")] == 0
    backup(ctx)
    assert parse(prom)[("borg_cyrus_last_run_success", "backup")] == 1


def test_failed_before_is_recorded_without_after(tmp_path):
    ctx = ctx_for(tmp_path)
    with pytest.raises(BorgCyrusError):
        with metrics.Before(ctx):
            raise BorgCyrusError("boom")
    assert parse(ctx.config["metrics"]["textfile"])[("borg_cyrus_last_run_success", "backup")] == 0


def test_skip_dry_run_and_off_write_nothing(tmp_path):
    ctx = ctx_for(tmp_path)
    with pytest.raises(SkipError):
        with metrics.Before(ctx):
            raise SkipError("busy")
    assert not os.path.exists(ctx.config["metrics"]["textfile"])
    with metrics.Run(ctx_for(tmp_path, dry_run=True), "restore"):
        pass
    assert not os.path.exists(ctx.config["metrics"]["textfile"])
    off = ctx_for(tmp_path / "off", textfile=False)
    with metrics.Run(off, "restore"):
        pass
    assert os.listdir(tmp_path / "off" / "prom") == []


def test_json_summary_has_the_metrics_values(tmp_path, capsys):
    ctx = ctx_for(tmp_path)
    backup(ctx, as_json=True)
    rec = json.loads(capsys.readouterr().out)
    assert rec["command"] == "backup" and rec["result"] == "success"
    assert rec["mailboxes"] == 19 and rec["messages"] == 31 and rec["excluded_messages"] == 3
    assert rec["started"] <= rec["ended"] and rec["duration_seconds"] >= 0
    with pytest.raises(BorgCyrusError):
        with metrics.Run(ctx, "restore", as_json=True, what="user", target="bob"):
            raise BorgCyrusError("no such user")
    rec = json.loads(capsys.readouterr().out)
    assert rec["result"] == "failure" and rec["what"] == "user" and rec["error"] == "no such user"


def test_textfile_is_replaced_atomically(tmp_path, monkeypatch):
    path = str(tmp_path / "m.prom")
    metrics.write_textfile(path, "old 1\n")
    seen = []
    real_replace = os.replace

    def replace(src, dst, *, src_dir_fd=None, dst_dir_fd=None):  # state.write_atomic: names in its directory
        seen.append((src, sorted(os.listdir(tmp_path))))
        with open(os.path.join(tmp_path, dst)) as f:
            assert f.read() == "old 1\n"  # never a partial file under the final name
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        metrics.write_textfile(path, "new 2\n")
    (tmp, names) = seen[0]
    assert "/" not in tmp and tmp.startswith(".") and not tmp.endswith(".prom")  # the collector skips it
    assert len(names) == 2
    assert sorted(os.listdir(tmp_path)) == ["m.prom"]  # the temp file is gone, the old file stays
    with open(path) as f:
        assert f.read() == "old 1\n"
    monkeypatch.setattr(os, "replace", real_replace)
    os.umask(0o077)
    try:
        metrics.write_textfile(path, "new 2\n")
    finally:
        os.umask(0o022)
    with open(path) as f:
        assert f.read() == "new 2\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_unwritable_textfile_only_warns(tmp_path, caplog):
    ctx = ctx_for(tmp_path)
    ctx.config["metrics"]["textfile"] = str(tmp_path / "missing-dir" / "x.prom")
    with metrics.Run(ctx, "restore"):
        pass  # no exception
    assert "could not write the metrics" in caplog.text


def test_render_escapes_nothing_odd_and_skips_missing_values():
    text = metrics.render({"backup": {"started": 1.5, "success": False, "values": {"mode": "live", "messages": 3}}})
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(fams) == {
        "borg_cyrus_last_run_start_timestamp_seconds",
        "borg_cyrus_last_run_success",
        "borg_cyrus_backup_messages",
    }
