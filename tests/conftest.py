import os
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)
BASE = "/tmp/bct"


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (starts Cyrus, runs borg as root)")
        for item in items:
            if "needs_root" in item.keywords or "slow" in item.keywords or "vm" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def base_dir(request):
    """A per-test directory the cyrus user can enter (pytest's tmp_path is 0700)."""
    # short: unix socket paths (lmtp) must stay under 108 bytes
    import hashlib
    node = request.node.name
    name = node.replace("test_", "")[:16].strip("_[") + "-" + hashlib.sha1(node.encode()).hexdigest()[:6]
    path = os.path.join(BASE, name)
    from borg_cyrus.cyrus.sandbox import Sandbox
    if os.path.exists(path):
        for sub in os.listdir(path):
            Sandbox(os.path.join(path, sub)).stop()
        shutil.rmtree(path)
    os.makedirs(path, 0o755)
    os.chmod(BASE, 0o755)
    os.chmod(path, 0o755)
    yield path
    for sub in os.listdir(path) if os.path.isdir(path) else ():
        Sandbox(os.path.join(path, sub)).stop()
    shutil.rmtree(path, ignore_errors=True)


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
        raise AssertionError(f"borg-cyrus {' '.join(args)} exited {r.returncode}, expected {check}\n"
                             f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def write_config(path, data):
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True)
    os.chmod(path, 0o600)
    return path


def sandbox_config(sb, base, **extra):
    cfg = {"imapd_conf": sb.imapd_conf, "cyrus_conf": sb.cyrus_conf,
           "work_directory": os.path.join(base, "work"), "service": sb.borg_cyrus_service()}
    cfg.update(extra)
    return write_config(os.path.join(base, "borg-cyrus.yaml"), cfg)


@pytest.fixture
def sandbox(base_dir):
    """A running, empty throwaway Cyrus."""
    from borg_cyrus.cyrus.sandbox import Sandbox
    sb = Sandbox(os.path.join(base_dir, "cyrus"), partitions=("default", "second")).create().start()
    yield sb
    sb.stop()


@pytest.fixture
def populated(sandbox):
    """A running throwaway Cyrus holding the demo's awkward data."""
    from borg_cyrus.tools.demo import populate
    populate(sandbox)
    return sandbox
