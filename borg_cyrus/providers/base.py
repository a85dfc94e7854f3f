"""Base class of the frozen-view modes (live, stop-master, snapshot providers).

A mode is chosen by the config's `mode`. `freeze` makes the view the backup
reads and records every change it makes in ctx.state *before* making it;
`undo` reverses one recorded step and must be idempotent, because it may run
in `after`, in the next `before` after a crash, or twice.
"""

from borg_cyrus.model import View


class Mode:
    name = ""
    description = ""

    def __init__(self, ctx):
        self.ctx = ctx

    def live_view(self):
        return View(imapd_conf=self.ctx.layout.imapd_conf, layout=self.ctx.layout, description=self.name)

    def freeze(self, locations):
        """Return the View for these locations (list of data Location)."""
        raise NotImplementedError

    def undo(self, step):
        """Reverse one recorded step (dict with 'kind')."""

    def cleanup_stale(self):
        """Remove leftovers of a crashed run that the state file does not know."""

    def check(self, state_data):
        """Problems with the view found after borg ran (e.g. an invalid snapshot)."""
        return []
