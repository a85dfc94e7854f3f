"""`restore mailbox NAME`: one folder (and with --recursive its children),
in place or --into a new folder of the running server."""

import time

from borg_cyrus.cyrus import mboxlist, storage
from borg_cyrus.cyrus.names import display, parent_name, to_intname
from borg_cyrus.errors import BorgCyrusError, ConfigError
from borg_cyrus.restore.plan import PartialRestore
from borg_cyrus.safety import trust


class MailboxRestore(PartialRestore):
    def run(self, name, into=None, recursive=False):
        t0 = time.monotonic()
        if into:
            trust.check_target_name(into)
        self.check_version()
        self.load_live()
        by_name = {mb.intname: mb for mb in self.s.dump.mailboxes if mb.has_spool}
        src_name = to_intname(name)
        if src_name not in by_name:
            alt = mboxlist.internal_name(name.strip().strip("/"))
            src_name = alt if alt in by_name else src_name
        if src_name not in by_name:
            close = sorted(n for n in by_name if n.split(".")[:2] == src_name.split(".")[:2])[:10]
            raise BorgCyrusError(
                f"mailbox {name} is not in archive {self.s.archive}"
                + (
                    f"; mailboxes of that owner: {', '.join(display(n) for n in close)}"
                    if close
                    else "; run `borg-cyrus restore list`"
                )
            )
        srcs = [by_name[src_name]]
        if recursive:
            srcs += [mb for n, mb in sorted(by_name.items()) if n.startswith(src_name + ".")]
        target_root = to_intname(into) if into else src_name
        if into:
            if target_root == src_name:
                raise ConfigError(f"--into {into} is the mailbox itself; leave out --into to restore in place")
            parent = parent_name(target_root)
            if parent and self.live_box(parent) is None:
                raise BorgCyrusError(
                    f"{display(parent)} does not exist on this server; --into needs an existing "
                    "parent folder (for a user: restore the user first)"
                )
        else:
            owner = storage.user_root(srcs[0])
            if owner and owner != src_name and self.live_box(owner) is None:
                raise BorgCyrusError(
                    f"{display(owner)} does not exist on this server; restore the user "
                    f"(`restore user`) or restore into an existing folder with --into"
                )
        plans = self.plan_all([(mb, target_root + mb.intname[len(src_name) :]) for mb in srcs], into=bool(into))
        self.say(
            "restore %s%s from archive %s: %d mailbox(es) — %d to create, %d to merge",
            display(src_name),
            f" into {display(target_root)}" if into else "",
            self.s.archive,
            len(plans),
            sum(p.action == "create" for p in plans),
            sum(p.action == "merge" for p in plans),
        )
        required = [self.box_sources(p)["data"] for p in plans]
        optional = [d for p in plans for k, d in self.box_sources(p).items() if k != "data"]
        self.extract(required + optional, required)
        headers, merged = self.apply(plans, [])
        self.tool("reconstruct", "--", *[self.admin(p.target) for p in sorted(plans, key=lambda p: p.target)])
        self.after_placed(plans)
        self.finish_log(t0, f"restore mailbox {display(src_name)}")
        return self.steps
