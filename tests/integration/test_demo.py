import os
import subprocess
import sys

import pytest

from support.common import BASE

pytestmark = pytest.mark.slow


def test_demo_runs_and_reports_identical(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "borg_cyrus", "demo", "--workdir", os.path.join(BASE, "demo")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT: identical" in r.stdout
    assert "rebuilt" in r.stdout and "mailboxes.db.batch" in r.stdout
    assert "excluded on purpose (messages not backed up): user/alice/Junk, user/dave/Junk" in r.stdout
