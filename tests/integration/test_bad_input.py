"""Bad input: one clear line (what, where, how to fix), non-zero exit, nothing changed."""

import os
import shutil

import pytest

from support.common import cli, sandbox_config, write_config


def error_line(r):
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("borg-cyrus: error: ")]
    assert len(errors) == 1, r.stderr
    return errors[0]


@pytest.fixture
def work(base_dir):
    return os.path.join(base_dir, "work")


def assert_untouched(work):
    assert not os.path.exists(os.path.join(work, "patterns"))
    assert not os.path.exists(os.path.join(work, "state.json"))
    assert not os.path.exists(os.path.join(work, "dump"))


def test_missing_imapd_conf(base_dir, work):
    cfg = write_config(
        os.path.join(base_dir, "c.yaml"), {"imapd_conf": "/nonexistent/imapd.conf", "work_directory": work}
    )
    line = error_line(cli("before", config=cfg))
    assert "/nonexistent/imapd.conf does not exist" in line and "imapd_conf" in line
    assert not os.path.exists(work)


def test_yaml_syntax_error(base_dir, work):
    path = os.path.join(base_dir, "c.yaml")
    with open(path, "w") as f:
        f.write("mode: live\nexclude:\n  mailboxes: [user/*/Junk\n")
    os.chmod(path, 0o600)
    r = cli("before", config=path)
    line = error_line(r)
    assert path in line and "line" in line and "YAML syntax error" in line
    assert r.returncode == 2


def test_unknown_key(base_dir, work):
    cfg = write_config(os.path.join(base_dir, "c.yaml"), {"exclude": {"mailbox": ["x"]}, "work_directory": work})
    line = error_line(cli("config", "validate", config=cfg))
    assert f"{cfg}: exclude.mailbox: unknown key" in line and "mailboxes" in line


def test_wrong_type(base_dir, work):
    cfg = write_config(os.path.join(base_dir, "c.yaml"), {"tool_timeout": "ten", "work_directory": work})
    line = error_line(cli("before", config=cfg))
    assert f"{cfg}: tool_timeout: must be integer, not a string" in line
    assert_untouched(work)


def test_unknown_mode(base_dir, work):
    cfg = write_config(os.path.join(base_dir, "c.yaml"), {"mode": "snapshott", "work_directory": work})
    line = error_line(cli("before", config=cfg))
    assert "mode: 'snapshott' is not a valid choice; use one of:" in line and "stop-master" in line


def test_explicit_config_missing(base_dir):
    line = error_line(cli("before", config=os.path.join(base_dir, "nope.yaml")))
    assert "config file not found" in line


def test_world_writable_config_refused(base_dir):
    cfg = write_config(os.path.join(base_dir, "c.yaml"), {})
    os.chmod(cfg, 0o666)
    line = error_line(cli("config", "validate", config=cfg))
    assert "writable by every user" in line and "chmod o-w" in line


def test_valid_config(base_dir):
    cfg = write_config(
        os.path.join(base_dir, "c.yaml"), {"mode": "stop-master", "exclude": {"mailboxes": ["user/*/Junk"]}}
    )
    r = cli("config", "validate", config=cfg, check=0)
    assert r.stdout.strip() == f"{cfg}: valid"


@pytest.mark.needs_root
def test_tools_not_found(sandbox, base_dir, work):
    cfg = sandbox_config(sandbox, base_dir, cyrus_tools_directory="/nonexistent/cyrus/bin")
    line = error_line(cli("before", config=cfg))
    assert "ctl_mboxlist" in line and "/nonexistent/cyrus/bin" in line and "cyrus_tools_directory" in line
    assert_untouched(work)


@pytest.mark.needs_root
def test_ctl_mboxlist_failing_keeps_cyrus_running(sandbox, base_dir, work):
    """A real ctl_mboxlist failure (damaged mailboxes.db) in stop-master mode:
    one error line, Cyrus is running again, no patterns/dump/state left."""
    sandbox.imap().create("user/alice")
    sandbox.stop()
    db = os.path.join(sandbox.confdir, "mailboxes.db")
    shutil.copy(db, db + ".good")
    with open(db, "r+b") as f:
        f.write(b"\x00garbage" * 64)
    sandbox.start()
    cfg = sandbox_config(sandbox, base_dir, mode="stop-master")
    line = error_line(cli("before", config=cfg))
    assert "ctl_mboxlist failed" in line
    assert sandbox.running(), "Cyrus must be started again after a failed before"
    assert_untouched(work)
    sandbox.stop()
    shutil.copy(db + ".good", db)
