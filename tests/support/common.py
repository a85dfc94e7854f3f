"""The environment the tests run borg-cyrus, borg and borgmatic in, the CLI as
borgmatic would run it, config files."""

import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)
# per test run and per xdist worker, so that parallel runs never share a server's directory
BASE = os.environ.get("BORG_CYRUS_TEST_BASE") or "/tmp/bct" + (
    "-" + os.environ["PYTEST_XDIST_WORKER"] if os.environ.get("PYTEST_XDIST_WORKER") else ""
)


def run_tmpdir():
    """This run's (and xdist worker's) own TMPDIR, with /tmp's mode. borgmatic
    makes its runtime directory there, and at the end of a create removes the
    bootstrap manifests of every TMPDIR/borgmatic-*: two borgmatic runs that
    share a TMPDIR remove each other's (its own runs never overlap on a host)."""
    path = os.path.join(BASE, "tmp")
    if not os.path.isdir(path):
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o1777)
    return path


def env(extra=None):
    e = dict(os.environ)
    for name in ("XDG_RUNTIME_DIR", "RUNTIME_DIRECTORY"):  # they come before TMPDIR for borgmatic
        e.pop(name, None)
    e["TMPDIR"] = run_tmpdir()
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


def wait_for(cond, timeout, step=0.05):
    """True as soon as cond() holds, False after timeout seconds."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return False


def tools_with(directory, name, script, source="/usr/lib/cyrus/bin"):
    """A Cyrus tools directory where `name` is a shell script and every other
    tool the real one: a tool that hangs or is slow on demand (fault injection,
    a real tool cannot be made to). Returns the directory."""
    os.makedirs(directory)
    for tool in os.listdir(source):
        if tool != name:
            os.symlink(os.path.join(source, tool), os.path.join(directory, tool))
    with open(os.path.join(directory, name), "w") as f:
        f.write("#!/bin/sh\n" + script + "\n")
    os.chmod(os.path.join(directory, name), 0o755)
    return directory


# cyrus.index minor version a Cyrus series writes (borg_cyrus/cyrus/index.py)
INDEX_VERSION = {(3, 6): 17, (3, 8): 17, (3, 10): 19}


def index_version(sb):
    """The cyrus.index version the sandbox's Cyrus writes (17 on Debian 12's 3.6, 19 on Debian 13's 3.10)."""
    from borg_cyrus.safety.trust import cyrus_series

    out = sb.tool("cyr_info", "version").stdout
    return INDEX_VERSION[cyrus_series(out.decode() if isinstance(out, bytes) else out)]
