"""Deterministic (seeded) Cyrus spools at several scales.

A Scale says how many users, folders and messages; `plan()` turns it into
the same list of mailboxes and messages on every machine (random.Random(seed)
only, no hash randomisation, no time). Two ways to put it into a Cyrus:

- `populate_lmtp()` — for the small scales: every mailbox is created with IMAP
  CREATE, INBOX mail is delivered by LMTP (lmtpd), folder mail is IMAP APPENDed
  by the user (with flags). Everything goes through Cyrus.
- `populate_fast()` — for the large ones: mailboxes are created with pipelined
  IMAP CREATEs (so mailboxes.db, cyrus.header, cyrus.index, the per-user
  files are Cyrus's own), the message files `<uid>.` are then written straight
  into each mailbox's directory (found through `ctl_mboxlist -d`: uniqueid and
  partition), and one `reconstruct 'user/*'` (Cyrus's own tool) indexes them:
  it parses every message and writes cyrus.index / cyrus.cache records, sizes
  and quota usage, exactly as for delivered mail.

Both run against a server whose data directory lives on tmpfs (fsync is free
there), and the data is then copied (`cp -a`) onto the filesystem under test:
creating 100k mailboxes on a loop device of this shared VM disk (~35 CREATEs
per second, fsync-bound) would take most of an hour, not half a minute.
"""

import base64
import bisect
import json
import math
import os
import random
import smtplib
import socket
import subprocess
import time
from dataclasses import dataclass, field

from borg_cyrus.cyrus.imapview import mutf7_encode, quote

FOLDERS = (
    "Sent",
    "Drafts",
    "Trash",
    "Junk",
    "Archive",
    "Archive/2022",
    "Archive/2023",
    "Archive/2024",
    "Projects",
    "Projects/Alpha",
    "Projects/Beta",
    "Lists",
    "Lists/cyrus-devel",
    "Lists/debian-user",
    "Family",
    "Receipts",
    "Travel",
    "Newsletters",
    "Old mail",
    "Entwürfe",
)
FLAT_FOLDERS = ("Sent", "Drafts", "Trash", "Junk", "Archive", "Family", "Receipts", "Travel", "Newsletters")
FOLDER_WEIGHT = {"INBOX": 6.0, "Sent": 2.5, "Drafts": 0.2, "Trash": 0.5, "Junk": 0.7, "Archive": 2.0}

# size classes: (name, share, median bytes, sigma of the log-normal, min, max)
SIZE_MIX = {
    "realistic": (
        ("text", 0.70, 3_000, 0.6, 1_000, 10_000),
        ("html", 0.25, 18_000, 0.5, 10_000, 60_000),
        ("attachment", 0.045, 150_000, 0.7, 60_000, 1_000_000),
        ("big attachment", 0.005, 1_800_000, 0.4, 1_000_000, 4_000_000),
    ),
    # the same classes with fewer attachments (keeps the 300k-message spool near 4 GB)
    "lean": (
        ("text", 0.70, 3_000, 0.6, 1_000, 10_000),
        ("html", 0.28, 18_000, 0.5, 10_000, 60_000),
        ("attachment", 0.018, 150_000, 0.7, 60_000, 1_000_000),
        ("big attachment", 0.002, 1_800_000, 0.4, 1_000_000, 4_000_000),
    ),
    # for the `before` scaling runs: only the number of files matters there
    "tiny": (("text", 1.0, 1_500, 0.3, 1_000, 3_000),),
}

WORDS = (
    "the of and to in is for on that with as this by be are from at or it an was we will can our have "
    "meeting backup server cyrus mailbox quota invoice report project alpha beta release draft review please "
    "thanks regards tomorrow monday budget customer ticket update schedule attached document version list "
    "discussion proposal minutes agenda deadline contract offer price order delivery shipping travel hotel "
    "flight family dinner photos weekend newsletter subscribe unsubscribe security password account login"
).split()


@dataclass(frozen=True)
class Scale:
    name: str
    users: int
    messages: int
    folders: tuple = (3, 9)  # folders per user (besides INBOX), uniform in [lo, hi]
    mix: str = "realistic"
    seed: int = 20261126
    lmtp: bool = False  # deliver through Cyrus (small scales) or write + reconstruct
    flat: bool = False  # exactly `folders[0]` un-nested folders per user (mailbox-count sweeps)

    def describe(self):
        f = f"{self.folders[0]}" if self.folders[0] == self.folders[1] else f"{self.folders[0]}-{self.folders[1]}"
        return (
            f"{self.users} users, {f} folders/user, {self.messages} messages, {self.mix} sizes, "
            f"{'LMTP/IMAP' if self.lmtp else 'files + reconstruct'}"
        )


@dataclass
class Plan:
    scale: Scale
    mailboxes: list = field(default_factory=list)  # (user, folder or None for INBOX)
    messages: list = field(default_factory=list)  # (mailbox index, size class, size, seed)

    @property
    def total_bytes(self):
        return sum(m[2] for m in self.messages)

    def per_mailbox(self):
        out = [[] for _ in self.mailboxes]
        for i, m in enumerate(self.messages):
            out[m[0]].append(i)
        return out


def user_name(i):
    return f"u{i:06d}"


def plan(scale):
    rnd = random.Random(scale.seed)
    p = Plan(scale)
    box_weights = []
    for u in range(scale.users):
        user = user_name(u)
        k = rnd.randint(*scale.folders)
        if scale.flat:
            folders = list(FLAT_FOLDERS[:k])
        else:
            folders = list(FOLDERS[:4]) + rnd.sample(FOLDERS[4:], max(0, k - 4))
            folders = folders[:k]
        # a parent folder must exist before its children (IMAP CREATE makes it anyway; keep the list explicit)
        for f in list(folders):
            if "/" in f and f.split("/")[0] not in folders:
                folders.append(f.split("/")[0])
        folders.sort(key=lambda f: (f.count("/"), f))
        p.mailboxes.append((user, None))
        p.mailboxes.extend((user, f) for f in folders)
        uw = rnd.lognormvariate(0, 0.8)  # some users get far more mail than others
        ws = [FOLDER_WEIGHT["INBOX"]] + [FOLDER_WEIGHT.get(f.split("/")[0], 1.0) for f in folders]
        tot = sum(ws)
        box_weights.extend(uw * w / tot for w in ws)
    cum = []
    acc = 0.0
    for w in box_weights:
        acc += w
        cum.append(acc)
    classes = SIZE_MIX[scale.mix]
    ccum = []
    acc = 0.0
    for c in classes:
        acc += c[1]
        ccum.append(acc)
    for _ in range(scale.messages):
        box = min(bisect.bisect(cum, rnd.random() * cum[-1]), len(cum) - 1)
        ci = min(bisect.bisect(ccum, rnd.random() * ccum[-1]), len(classes) - 1)
        name, _share, median, sigma, lo, hi = classes[ci]
        size = int(min(hi, max(lo, rnd.lognormvariate(math.log(median), sigma))))
        p.messages.append((box, name, size, rnd.getrandbits(32)))
    return p


# -- message bodies ------------------------------------------------------------


class TextPool:
    """A few MB of seeded word salad; message bodies are slices of it (fast,
    compressible like text, no two messages alike)."""

    def __init__(self, seed, size=4 << 20):
        rnd = random.Random(seed ^ 0x5EED)
        lines = []
        n = 0
        while n < size:
            line = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(6, 14)))
            lines.append(line)
            n += len(line) + 2
        self.text = "\r\n".join(lines)

    def slice(self, rnd, n):
        start = rnd.randrange(0, len(self.text) - n - 1)
        return self.text[start : start + n].strip("\r\n")


def message(plan_, i, pool):
    box, cls, size, seed = plan_.messages[i]
    user, folder = plan_.mailboxes[box]
    rnd = random.Random(seed)
    sender = f"{rnd.choice(WORDS)}.{rnd.choice(WORDS)}@example.org"
    subj = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(2, 7)))
    day = 1 + seed % 28
    head = (
        f"Return-Path: <{sender}>\r\nFrom: {sender}\r\nTo: {user}@example.com\r\n"
        f"Subject: {subj}\r\nDate: Mon, {day:02d} Jun 2025 {seed % 24:02d}:{seed % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{plan_.scale.seed}.{i}.{seed}@bench.example>\r\nMIME-Version: 1.0\r\n"
    )
    if cls in ("text",):
        body = pool.slice(rnd, max(200, size - len(head) - 60))
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n").encode()
    b = f"b{seed:08x}"
    text = pool.slice(rnd, min(4000, max(200, size // 4)))
    parts = [f"--{b}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"]
    if cls == "html":
        html = pool.slice(rnd, max(500, size - len(head) - len(text) - 300))
        parts.append(
            f"--{b}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>"
            + html.replace("\r\n", "</p>\r\n<p>")
            + "</p></body></html>\r\n"
        )
        ctype = "multipart/alternative"
    else:
        raw = rnd.randbytes(max(1000, (size - len(head) - len(text)) * 3 // 4))
        enc = base64.encodebytes(raw).decode().replace("\n", "\r\n")
        parts.append(
            f"--{b}\r\nContent-Type: application/pdf; name=\"doc{seed % 1000}.pdf\"\r\n"
            f"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment\r\n\r\n{enc}"
        )
        ctype = "multipart/mixed"
    return (head + f"Content-Type: {ctype}; boundary=\"{b}\"\r\n\r\n" + "".join(parts) + f"--{b}--\r\n").encode()


# -- populating a server -------------------------------------------------------


def mailbox_name(user, folder):
    """Admin-namespace name (unixhierarchysep), Unicode (quote() encodes it)."""
    return f"user/{user}" + (f"/{folder}" if folder else "")


class Pipelined:
    """One raw IMAP connection sending commands without waiting (CREATE is
    the slow part of a 100k-mailbox spool)."""

    def __init__(self, port, user="cyrus"):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.s.makefile("rb")
        self.f.readline()
        self.n = 0
        self.run([f"LOGIN {user} x"])

    def _pipeline(self, payloads, window, what):
        """Send tagged commands (bytes after the tag) with up to `window` in flight."""
        bad = []
        sent = done = 0
        while done < len(payloads):
            while sent < len(payloads) and sent - done < window:
                self.s.sendall(f"p{self.n + sent} ".encode() + payloads[sent])
                sent += 1
            line = self.f.readline()
            if not line:
                raise RuntimeError("IMAP connection closed")
            if line.startswith(b"p"):
                done += 1
                if b" OK" not in line[:20]:
                    bad.append(line.decode(errors="replace").strip())
        self.n += len(payloads)
        if bad:
            raise RuntimeError(f"{len(bad)} {what} failed, e.g. {bad[0]}")

    def run(self, commands, window=500):
        self._pipeline([f"{c}\r\n".encode() for c in commands], window, "IMAP command(s)")

    def append_many(self, items, window=50):
        """APPEND (mailbox, flags, data) items with LITERAL+ (no round trip per message)."""
        self._pipeline(
            [f"APPEND {box} {flags}{{{len(data)}+}}\r\n".encode() + data + b"\r\n" for box, flags, data in items],
            window,
            "APPEND(s)",
        )

    def close(self):
        try:
            self.s.sendall(b"z LOGOUT\r\n")
        finally:
            self.s.close()


def create_mailboxes(sb, p, batch=2000):
    names = [quote(mailbox_name(u, f)) for u, f in p.mailboxes]
    c = Pipelined(sb.port)
    try:
        for i in range(0, len(names), batch):
            c.run([f"CREATE {n}" for n in names[i : i + batch]])
    finally:
        c.close()


def mailbox_dirs(sb):
    """{internal name: spool directory} from `ctl_mboxlist -d` (uuid layout)."""
    r = subprocess.run(
        [sb.tools["ctl_mboxlist"], "-C", sb.imapd_conf, "-d"], capture_output=True, text=True, check=True
    )
    out = {}
    for name, v in json.loads(r.stdout).items():
        u = v["uniqueid"]
        part = sb.partitions[v.get("partition") or "default"]
        out[name] = os.path.join(part, "uuid", u[0], u[1], u)
    return out


def internal_name(user, folder):
    # ctl_mboxlist -d keys: '.' separator, '^' for a dot inside a name, modified UTF-7
    parts = ["user", user] + (mutf7_encode(folder).split("/") if folder else [])
    return ".".join(x.replace(".", "^") for x in parts)


def populate_fast(sb, p, pool=None, log=print):
    """Pipelined CREATEs, message files written directly, then one
    `reconstruct 'user/*'` (a pattern argument: Cyrus walks the mailbox list
    once; one argument per mailbox or per user costs a scan of the whole
    list each, quadratic at 100k mailboxes)."""
    pool = pool or TextPool(p.scale.seed)
    t = time.monotonic()
    create_mailboxes(sb, p)
    t_create = time.monotonic() - t
    dirs = mailbox_dirs(sb)
    t = time.monotonic()
    nbytes = 0
    for box, idxs in enumerate(p.per_mailbox()):
        if not idxs:
            continue
        d = dirs[internal_name(*p.mailboxes[box])]
        for uid, i in enumerate(idxs, 1):
            data = message(p, i, pool)
            fn = os.path.join(d, f"{uid}.")
            with open(fn, "wb") as f:
                f.write(data)
            os.chown(fn, sb.uid, sb.gid)
            nbytes += len(data)
    t_write = time.monotonic() - t
    t = time.monotonic()
    if p.messages:
        subprocess.run([sb.tools["reconstruct"], "-C", sb.imapd_conf, "-q", "user/*"], check=True, capture_output=True)
    t_rec = time.monotonic() - t
    log(
        f"  {p.scale.name}: {len(p.mailboxes)} mailboxes created in {t_create:.1f} s; {len(p.messages)} message "
        f"files ({nbytes / 1e6:.0f} MB) written in {t_write:.1f} s, reconstruct 'user/*' {t_rec:.1f} s"
    )
    return {"create_s": t_create, "write_s": t_write, "reconstruct_s": t_rec, "bytes": nbytes}


def populate_lmtp(sb, p, pool=None, log=print):
    """Everything through Cyrus: CREATE, LMTP (lmtpd) for INBOX mail, IMAP
    APPEND by the user (LITERAL+, pipelined) with flags for folder mail."""
    pool = pool or TextPool(p.scale.seed)
    t = time.monotonic()
    create_mailboxes(sb, p)
    t_create = time.monotonic() - t
    t = time.monotonic()
    by_user = {}
    for i, (box, *_rest) in enumerate(p.messages):
        by_user.setdefault(p.mailboxes[box][0], []).append(i)
    lm = smtplib.LMTP(sb.lmtp_socket)
    nbytes = n_lmtp = n_append = 0
    try:
        for user in sorted(by_user):
            appends = []
            for i in by_user[user]:
                data = message(p, i, pool)
                nbytes += len(data)
                folder = p.mailboxes[p.messages[i][0]][1]
                if folder is None:
                    lm.sendmail("sender@example.org", [user], data)
                    n_lmtp += 1
                    continue
                flags = "(\\Seen) " if p.messages[i][3] % 3 else ""
                appends.append((quote("INBOX/" + folder), flags, data))
            if appends:
                c = Pipelined(sb.port, user)
                try:
                    c.append_many(appends)
                finally:
                    c.close()
                n_append += len(appends)
    finally:
        try:
            lm.quit()
        except Exception:
            pass
    t_deliver = time.monotonic() - t
    log(
        f"  {p.scale.name}: {len(p.mailboxes)} mailboxes created in {t_create:.1f} s, {len(p.messages)} messages "
        f"({nbytes / 1e6:.0f} MB; {n_lmtp} by LMTP, {n_append} by IMAP APPEND) in {t_deliver:.1f} s"
    )
    return {"create_s": t_create, "deliver_s": t_deliver, "bytes": nbytes, "lmtp": n_lmtp, "append": n_append}


def populate(sb, p, log=print):
    return populate_lmtp(sb, p, log=log) if p.scale.lmtp else populate_fast(sb, p, log=log)
