"""Built-in plugin: mode `rsync-staging` — the Cyrus wiki's no-snapshot recipe.

Stop Cyrus, rsync every data location into a staging copy at a stable path,
start Cyrus, back up the copy. Downtime is the length of one rsync of what
changed since the last run (usually short), not of the whole backup. Needs
disk space for a full copy of the spool.
"""

import logging
import os
import time

from borg_cyrus.hookspecs import hookimpl
from borg_cyrus.model import View
from borg_cyrus.providers.base import Mode
from borg_cyrus.cyrus.service import Service
from borg_cyrus.cyrus.pitconfig import point_in_time_config, remove_pit_dir
from borg_cyrus.providers.watchdog import Watchdog, own_guard

log = logging.getLogger(__name__)

SCHEMA = {
    "rsync_staging": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": "Settings of mode rsync-staging.",
        "properties": {
            "directory": {
                "type": ["string", "null"],
                "pattern": "^/",
                "format": "own-directory",
                "default": None,
                "description": "Stable staging directory (default <work_directory>/staging).",
            },
            "options": {
                "type": "array",
                "items": {"type": "string"},
                "default": ["-aHAX", "--numeric-ids", "--delete", "--sparse"],
                "description": "rsync options (argv).",
            },
            "max_downtime": {
                "type": ["number", "null"],
                "default": None,
                "description": "Dead-man switch: start Cyrus after this many seconds even if the "
                "rsync is still running (the copy is then not consistent).",
            },
        },
    }
}


class RsyncStaging(Mode):
    name = "rsync-staging"
    description = "stop Cyrus, rsync the spool to a staging copy, start Cyrus, back up the copy"

    @property
    def staging(self):
        return self.ctx.config["rsync_staging"]["directory"] or os.path.join(self.ctx.work_dir, "staging")

    def freeze(self, locations):
        st = self.ctx.state
        cfg = self.ctx.config["rsync_staging"]
        svc = Service(self.ctx.config["service"], self.ctx.runner)
        stop = svc.is_running()
        if not self.ctx.dry_run:
            os.makedirs(self.staging, 0o700, exist_ok=True)
        if stop:
            wd = Watchdog.start(
                self.ctx, deadline=cfg["max_downtime"], guards=[own_guard()], service=self.ctx.config["service"]
            )
            wd_step = st.push("watchdog", self.name, process=wd)
        t0 = time.monotonic()
        if stop:
            stop_step = st.push("service-stopped", self.name, service=svc.describe())
            svc.stop()
        for loc in locations:
            dst = self.staging.rstrip("/") + loc.path
            if not self.ctx.dry_run:
                os.makedirs(os.path.dirname(dst), 0o700, exist_ok=True)
            src = loc.path + ("/" if os.path.isdir(loc.path) else "")
            self.ctx.run(["rsync", *cfg["options"], src, dst + ("/" if src.endswith("/") else "")])
        if stop:
            svc.start()
            st.drop(stop_step)
            Watchdog.stop(wd)
            st.drop(wd_step)
        blocked = time.monotonic() - t0
        conf, lay = point_in_time_config(self.ctx, self.staging, self.name)
        return View(
            imapd_conf=conf,
            layout=lay,
            prefixes={loc.path: self.staging for loc in locations},
            blocked_seconds=blocked,
            description="rsync-staging copy",
        )

    def undo(self, step):
        if step["kind"] == "watchdog":
            Watchdog.stop(step.get("process"))
        elif step["kind"] == "service-stopped":
            svc = Service(self.ctx.config["service"], self.ctx.runner)
            if not svc.is_running():
                svc.start()
        elif step["kind"] == "pit-dir":
            remove_pit_dir(self.ctx, step["path"])


@hookimpl
def modes():
    return [RsyncStaging]


@hookimpl
def config_schema():
    return SCHEMA
