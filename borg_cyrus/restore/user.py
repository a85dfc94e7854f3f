"""`restore user USER`: every mailbox of one user, with seen/subscription
data, sieve scripts and quota limits, into the running server."""

import logging
import os
import time

from borg_cyrus.cyrus import storage
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.restore.plan import PartialRestore
from borg_cyrus.safety import trust

log = logging.getLogger(__name__)


class UserRestore(PartialRestore):
    def run(self, userid):
        t0 = time.monotonic()
        trust.check_userid(userid)
        self.check_version()
        self.load_live()
        boxes = [mb for mb in self.s.dump.mailboxes if mb.has_spool and mb.userid == userid]
        if not boxes:
            users = sorted({mb.userid for mb in self.s.dump.mailboxes if mb.userid})
            raise BorgCyrusError(
                f"user {userid} is not in archive {self.s.archive} (users: "
                f"{', '.join(users[:20])}{' …' if len(users) > 20 else ''})"
            )
        inbox = next((mb for mb in boxes if mb.is_inbox), None)
        if inbox is None:
            raise BorgCyrusError(
                f"archive {self.s.archive} has mailboxes of {userid} but no INBOX; "
                "restore them one by one with `restore mailbox`"
            )
        plans = self.plan_all([(mb, mb.intname) for mb in boxes], into=False)
        self.say(
            "restore user %s from archive %s: %d mailbox(es) — %d to create, %d to merge",
            userid,
            self.s.archive,
            len(plans),
            sum(p.action == "create" for p in plans),
            sum(p.action == "merge" for p in plans),
        )

        # per-user files: from the archived INBOX's location to the live one's
        inbox_plan = next(p for p in plans if p.src is inbox)
        live_inbox = inbox_plan.dst_mailbox()
        src_user = storage.user_paths(self.alay, userid, inbox)
        dst_user = storage.user_paths(self.llay, userid, live_inbox)
        extras = []
        for kind, label in (("user", "seen/subscription data"), ("sieve", "sieve scripts")):
            srcs, dsts = src_user[kind], dst_user[kind]
            if len(srcs) == len(dsts):
                pairs = list(zip(srcs, dsts))
            elif len(srcs) == 1:  # uuid dir -> legacy files
                pairs = [(os.path.join(srcs[0], f"{os.path.basename(d).rsplit('.', 1)[1]}.db"), d) for d in dsts]
            else:  # legacy files -> uuid dir
                pairs = [(s, os.path.join(dsts[0], f"{s.rsplit('.', 1)[1]}.db")) for s in srcs]
            # an INBOX that did not exist: per-user files found at its place were
            # made after the deletion (a login, a delivery attempt) and hold nothing
            leftover = inbox_plan.action == "create"
            for s, d in pairs:
                extras.append((s, d, f"{label} {os.path.basename(d)}", leftover))
        qsrc = storage.quota_file(self.alay, storage.user_root(inbox))
        qdst = storage.quota_file(self.llay, storage.user_root(live_inbox))
        if qsrc and qdst:
            extras.append((qsrc, qdst, "quota limits", False))
        elif qsrc or qdst:
            log.info("quota limits come from the databases dump (quota_db is not quotalegacy on both sides)")

        required = [self.box_sources(p)["data"] for p in plans]
        optional = [d for p in plans for k, d in self.box_sources(p).items() if k != "data"]
        missing = self.extract(required + optional + [x[0] for x in extras], required)
        extras = [(s, d, label, lo) for s, d, label, lo in extras if s not in missing]
        headers, merged = self.apply(plans, extras)
        # per-user databases the archive could not give in this server's backend: from the text dumps
        where = dst_user["user"][0]
        user_dir = (where, True) if not live_inbox.legacy else (where[: -len(where.rsplit(".", 1)[1])], False)
        if not self.ctx.dry_run:
            for _plugin, lines in self.ctx.plugins.restore_user_dump(self.ctx, self.s.dump, userid, user_dir):
                for line in lines:
                    self.say("%s", line)
        self.tool("reconstruct", "-r", "-u", "--", userid)
        for p in merged:
            self.tool("reconstruct", "--", self.admin(p.target))
        self.after_placed(plans)
        self.finish_log(t0, f"restore user {userid}")
        return self.steps
