import os
import shutil

import pytest

from support.common import BASE, ROOT, VENV_BIN, cli, env, sandbox_config, write_config  # noqa: F401
from support.timing import (  # noqa: F401 - progress lines and the cost table (tests/support/timing.py)
    pytest_collection_finish,
    pytest_configure,
    pytest_runtest_logreport,
    pytest_sessionstart,
    pytest_terminal_summary,
)


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
    if not os.environ.get("BORG_CYRUS_KEEP_TEST_DIRS"):  # set it to look at a failed test's servers
        shutil.rmtree(path, ignore_errors=True)


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
