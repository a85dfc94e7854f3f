"""The environment the tests run borg-cyrus, borg and borgmatic in, the CLI as
borgmatic would run it, config files."""

import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)
BASE = "/tmp/bct"


def env(extra=None):
    e = dict(os.environ)
    e["PATH"] = VENV_BIN + os.pathsep + e.get("PATH", "")
    e["BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK"] = "yes"
    e["BORG_RELOCATED_REPO_ACCESS_IS_OK"] = "yes"
    e.pop("BORG_CYRUS_CONFIG", None)
    e.update(extra or {})
    return e


def cli(*args, config=None, check=None, extra_env=None, input=None):
    """Run borg-cyrus as a separate process (as borgmatic would)."""
    argv = [sys.executable, "-m", "borg_cyrus"]
    if config:
        argv += ["-c", config]
    argv += list(args)
    r = subprocess.run(argv, capture_output=True, text=True, env=env(extra_env), input=input)
    if check is not None and r.returncode != check:
        raise AssertionError(
            f"borg-cyrus {' '.join(args)} exited {r.returncode}, expected {check}\n"
            f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
        )
    return r


def write_config(path, data):
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True)
    os.chmod(path, 0o600)
    return path


def sandbox_config(sb, base, **extra):
    cfg = {
        "imapd_conf": sb.imapd_conf,
        "cyrus_conf": sb.cyrus_conf,
        "work_directory": os.path.join(base, "work"),
        "service": sb.borg_cyrus_service(),
    }
    cfg.update(extra)
    return write_config(os.path.join(base, "borg-cyrus.yaml"), cfg)
