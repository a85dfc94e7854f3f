"""Built-in plugin: mode `live` — read the running server, no freeze."""

import logging

from borg_cyrus.hookspecs import hookimpl
from borg_cyrus.providers.base import Mode

log = logging.getLogger(__name__)


class Live(Mode):
    name = "live"
    description = "read the running server as it is (no downtime, no consistency guarantee)"

    def freeze(self, locations):
        log.warning(
            "mode live: the spool is read while Cyrus runs; a message moved between folders "
            "during the backup can be missing from the archive. Use a snapshot mode or stop-master "
            "for a consistent backup."
        )
        return self.live_view()


@hookimpl
def modes():
    return [Live]
