"""Our reading of imapd.conf against Cyrus's own (cyr_info)."""

import os
import subprocess

import pytest

from borg_cyrus.cyrus import imapdconf, layout


@pytest.mark.needs_root
def test_parser_agrees_with_cyr_info(tmp_path):
    """Our reading of imapd.conf equals what Cyrus itself reports."""
    tools = layout.find_tools()
    if not tools.has("cyr_info"):
        pytest.skip("cyr_info not installed")
    p = tmp_path / "imapd.conf"
    p.write_text(
        "configdirectory: /var/lib/cyrus\nPartition-Default: /var/spool/cyrus/mail\n"
        "partition-second:    /srv/second   \nsievedir: {configdirectory}/sieve\n"
        "metapartition-default: /srv/meta\nduplicate_db_path: /srv/dup.db\n"
    )
    os.chmod(tmp_path, 0o755)
    os.chmod(p, 0o644)
    out = subprocess.run([tools["cyr_info"], "-C", str(p), "conf"], capture_output=True, text=True, check=True).stdout
    theirs = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    ours = imapdconf.load(str(p)).values
    for key, value in ours.items():
        assert theirs.get(key) == value, key
