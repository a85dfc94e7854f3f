"""Built-in plugin: mode `stop-master` — Cyrus is stopped for the whole backup."""

import logging

from borg_cyrus.hookspecs import hookimpl
from borg_cyrus.providers.base import Mode
from borg_cyrus.cyrus.service import Service
from borg_cyrus.providers.watchdog import Watchdog

log = logging.getLogger(__name__)


class StopMaster(Mode):
    name = "stop-master"
    description = "stop Cyrus before the backup, start it in `after` (consistent, with downtime)"

    def service(self):
        return Service(self.ctx.config["service"], self.ctx.runner)

    def freeze(self, locations):
        svc = self.service()
        if svc.is_running():
            # dead-man switch: if the borgmatic that owns this run dies before
            # `after`, an independent watchdog starts Cyrus again
            owner = self.ctx.state.data.get("owner")
            if owner:
                wd = Watchdog.start(
                    self.ctx,
                    guards=[f"{owner['pid']}:{owner['start']}"],
                    service=self.ctx.config["service"],
                    before_deadline=self.ctx.config["run_timeout"],
                )
                self.ctx.state.push("watchdog", self.name, process=wd)
            self.ctx.state.push("service-stopped", self.name, service=svc.describe())
            svc.stop()
        else:
            log.warning(
                "Cyrus is not running (%s); backing up without stopping it, and it will not be started", svc.describe()
            )
        return self.live_view()

    def undo(self, step):
        if step["kind"] == "watchdog":
            svc = self.service()
            stopping = svc.stopping_unit()
            if stopping and not svc.is_running():
                # Cyrus's start waits for this unit's stop (Service.start): the
                # switch, outside the unit, sees it through once borgmatic is gone
                log.info(
                    "leaving the dead-man switch armed: it checks that Cyrus comes up once %s has stopped", stopping
                )
                return
            Watchdog.stop(step.get("process"))
            return
        if step["kind"] != "service-stopped":
            return
        svc = self.service()
        if svc.is_running():
            log.info("Cyrus is already running")
            return
        svc.start()


@hookimpl
def modes():
    return [StopMaster]
