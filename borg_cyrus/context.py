"""What every plugin gets: config, discovered layout, tools, the runner."""

import grp
import logging
import os
import pwd
from dataclasses import dataclass, field

from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.execute import Runner

log = logging.getLogger("borg_cyrus")


@dataclass
class Context:
    config: dict
    layout: object
    tools: object
    runner: Runner
    plugins: object
    state: object = None
    mailboxes: list | None = None
    manifest: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)

    @property
    def dry_run(self):
        return self.runner.dry_run

    @property
    def work_dir(self):
        return self.config["work_directory"]

    @property
    def dump_dir(self):
        return os.path.join(self.work_dir, "dump")

    @property
    def patterns_file(self):
        return os.path.join(self.work_dir, "patterns")

    @property
    def state_file(self):
        return os.path.join(self.work_dir, "state.json")

    @property
    def lock_file(self):
        return os.path.join(self.work_dir, "lock")

    def cyrus_ids(self):
        """(uid, gid) of the configured cyrus user and group."""
        try:
            return (pwd.getpwnam(self.config["cyrus_user"]).pw_uid,
                    grp.getgrnam(self.config["cyrus_group"]).gr_gid)
        except KeyError as e:
            raise BorgCyrusError(f"user/group {e.args[0]} does not exist; install Cyrus first "
                                 "or set cyrus_user/cyrus_group") from None

    def run(self, argv, **kw):
        return self.runner.run(argv, **kw)

    def cyrus(self, tool, *args, conf=None, **kw):
        """Run a Cyrus tool with -C (the live config unless conf is given).

        Tools started as root switch to the cyrus user themselves.
        """
        kw.setdefault("timeout", self.config["tool_timeout"])
        kw.setdefault("what", tool)
        return self.runner.run([self.tools[tool], "-C", conf or self.layout.imapd_conf, *args], **kw)
