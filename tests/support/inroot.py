"""Run inside a clean root (tests/support/trixieroot.py) by a test on the
host: a throwaway Cyrus of the root's own version at the paths of the
host's sandbox, restored from the host's archive.

    python tests/support/inroot.py SPEC.json ACTION [ARG]

SPEC.json: {"base", "partitions", "port", "sieve_port", "extra_conf",
"repo", "bc", "bm"} (the borg-cyrus and borgmatic configs and the
repository, copied into the root at the host's paths). ACTION:
  restore-full ARCHIVE   wipe, borg extract, this Cyrus's imapd.conf, restore full, start
  restore-user USER      delete USER over IMAP, then `restore user USER`
  restore-mailbox NAME   delete NAME over IMAP, then `restore mailbox NAME`
  backup                 a fresh server, the demo data, `borgmatic create` (its own repo)
  stop
Prints one JSON line: the command's exit code and output. The server keeps
running (the host's test reads it over the shared loopback) until `stop`.
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from borg_cyrus.cyrus.sandbox import Sandbox  # noqa: E402
from support.common import cli  # noqa: E402
from support.helpers import extract, wipe  # noqa: E402
from support.restore_helpers import delete_mailbox, delete_user  # noqa: E402


def server(spec):
    sb = Sandbox(
        spec["base"], partitions=tuple(spec["partitions"]), port=spec["port"], extra_conf=spec.get("extra_conf")
    )
    sb.sieve_port = spec["sieve_port"]
    return sb


def restore(spec, *args):
    return cli("restore", *args, "--borgmatic-config", spec["bm"], config=spec["bc"])


def main(spec_file, action, arg=None):
    with open(spec_file) as f:
        spec = json.load(f)
    sb = server(spec)
    if action == "restore-full":
        os.makedirs(sb.base, exist_ok=True)
        wipe(sb)
        extract(spec["repo"], arg)
        sb.write_config()
        r = cli("restore", "full", config=spec["bc"])
        if r.returncode == 0:
            sb.start()
    elif action == "restore-user":
        delete_user(sb, arg)
        r = restore(spec, "user", arg)
    elif action == "restore-mailbox":
        delete_mailbox(sb, arg)
        r = restore(spec, "mailbox", arg)
    elif action == "backup":
        from borg_cyrus.tools.demo import populate
        from support.helpers import borgmatic, borgmatic_config, init_repo

        sb.create().start()
        populate(sb, managesieve=True)
        bm = borgmatic_config(os.path.dirname(spec["repo"]), spec["repo"], os.path.join(spec["work"], "patterns"))
        init_repo(bm)
        r = borgmatic(bm, "create", bc_config=spec["bc"], check=False)
    elif action == "stop":
        sb.stop()
        r = subprocess.CompletedProcess([], 0, "", "")
    else:
        raise SystemExit(f"inroot: unknown action {action}")
    print(json.dumps({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr}))


if __name__ == "__main__":
    main(*sys.argv[1:])
