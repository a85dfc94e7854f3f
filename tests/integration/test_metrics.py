"""The metrics textfile through real runs: borgmatic create (success, and a
`before` that really fails: a configured extra path that does not exist),
then verify; parsed with prometheus_client, checked against the manifest."""

import json
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.common import cli, sandbox_config
from support.helpers import borgmatic
from support.restore_helpers import backup

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


def read(path):
    with open(path) as f:
        text = f.read()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, s.labels.get("command"))] = s.value
    return out


def test_metrics_after_backup_failed_backup_and_verify(populated, base_dir):
    prom = os.path.join(base_dir, "node-exporter", "borg-cyrus.prom")
    os.makedirs(os.path.dirname(prom))
    b = backup(populated, base_dir, metrics={"textfile": prom}, exclude={"mailboxes": ["user/*/Junk"]})
    m = b["manifest"]
    assert oct(os.stat(prom).st_mode & 0o777) == "0o644"
    v = read(prom)
    assert v[("borg_cyrus_last_run_success", "backup")] == 1
    assert v[("borg_cyrus_backup_mailboxes", None)] == m["counts"]["mailboxes"]
    assert v[("borg_cyrus_backup_messages", None)] == m["counts"]["messages"] > 0
    assert v[("borg_cyrus_backup_bytes", None)] == m["counts"]["bytes"]
    assert v[("borg_cyrus_backup_excluded_mailboxes", None)] == len(m["excluded_mailboxes"]) > 0
    assert v[("borg_cyrus_backup_write_blocked_seconds", None)] == 0  # live
    last_ok = v[("borg_cyrus_last_success_timestamp_seconds", "backup")]
    assert last_ok == v[("borg_cyrus_last_run_end_timestamp_seconds", "backup")]
    assert os.listdir(os.path.dirname(prom)) == ["borg-cyrus.prom"]  # no temp file left

    # a real failure: the extra path is not there; borgmatic fails and still runs `after`
    sandbox_config(populated, base_dir, metrics={"textfile": prom}, extra_paths=["/nonexistent/tls/key.pem"])
    r = borgmatic(b["bm"], "create", bc_config=b["bc"], check=False)
    assert r.returncode != 0 and "/nonexistent/tls/key.pem" in r.stdout + r.stderr
    v = read(prom)
    assert v[("borg_cyrus_last_run_success", "backup")] == 0
    assert v[("borg_cyrus_last_success_timestamp_seconds", "backup")] == last_ok
    assert v[("borg_cyrus_last_run_start_timestamp_seconds", "backup")] > last_ok
    assert ("borg_cyrus_last_run_success", "verify") not in v

    # borgmatic's `states: [fail]` hook: `before` went well, borg create did not
    sandbox_config(populated, base_dir, metrics={"textfile": prom})
    cli("before", config=b["bc"], check=0)
    rec = json.loads(cli("after", "--failed", "--json", config=b["bc"], check=0).stdout)
    assert rec["command"] == "backup" and rec["result"] == "failure" and rec["mailboxes"] == m["counts"]["mailboxes"]
    v = read(prom)
    assert v[("borg_cyrus_last_run_success", "backup")] == 0
    assert v[("borg_cyrus_last_success_timestamp_seconds", "backup")] == last_ok

    r = cli(
        "verify",
        "--borgmatic-config",
        b["bm"],
        "--workdir",
        os.path.join(base_dir, "drill"),
        "--json",
        config=b["bc"],
        check=0,
    )
    rep = json.loads(r.stdout)
    assert rep["ok"] and rep["result"] == "success" and rep["command"] == "verify"
    v = read(prom)
    assert v[("borg_cyrus_last_run_success", "verify")] == 1
    assert v[("borg_cyrus_verify_mailboxes", None)] == rep["stats"]["mailboxes"] > 0
    assert v[("borg_cyrus_verify_failed_mailboxes", None)] == 0
    assert v[("borg_cyrus_last_run_duration_seconds", "verify")] == pytest.approx(rep["duration_seconds"], abs=0.01)
    assert v[("borg_cyrus_last_success_timestamp_seconds", "verify")] == pytest.approx(rep["ended"], abs=0.01)
    # the backup's values stay as they were
    assert v[("borg_cyrus_last_run_success", "backup")] == 0
    assert v[("borg_cyrus_last_success_timestamp_seconds", "backup")] == last_ok
    # verify's own summary lines went to stderr, one per step (not a terminal)
    steps = [ln for ln in r.stderr.splitlines() if ln.startswith("borg-cyrus: verify: ")]
    assert [ln.split(":")[2].strip() for ln in steps] == ["extract", "files", "imap"], r.stderr
