"""A throwaway Cyrus server in one directory, on loopback ports.

Used by `borg-cyrus demo`, the restore drill and the tests. Everything (config,
spools, sockets, pidfile) lives under `base`; any login works with any password
(`sasl_pwcheck_method: alwaystrue`), and `cyrus` is the admin. IMAP and, when
timsieved is installed, ManageSieve listen on loopback ports; with tcp=False
(the restore drill) IMAP listens only on a socket in the server's run
directory, which only root and the cyrus user's group can reach.

Directories are made with explicit modes whatever the umask, walked one
component at a time without following a symlink that anyone but root could
have planted, and given to the cyrus user through their descriptor.
"""

import errno
import grp
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import time

from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.execute import Runner
from borg_cyrus.cyrus.imapview import ManageSieve
from borg_cyrus.cyrus.layout import find_tools
from borg_cyrus.safety import safeio
from borg_cyrus.state import proc_stat

CYRUS_USER = "cyrus"
CYRUS_GROUP = "mail"


# what a value written to imapd.conf may never hold: a line break or another
# control character would start a new key (or cut the line short)
CONFIG_UNSAFE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
CONFIG_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UnixIMAP4(imaplib.IMAP4):
    """imaplib over a unix-domain socket."""

    def __init__(self, path, timeout=None):
        self.socket_path = path
        super().__init__("localhost", 0, timeout)

    def _create_socket(self, timeout):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if timeout is not None:
            sock.settimeout(timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        return sock


def render_conf(values, where):
    """imapd.conf text of {key: value}; a key or value that could break out
    of its line (a line break adds a key) is refused, nothing is written."""
    lines = []
    for k, val in values.items():
        val = str(val)
        if not CONFIG_KEY.fullmatch(str(k)) or CONFIG_UNSAFE.search(val):
            raise BorgCyrusError(
                f"{where}: {k!r}: {val!r} is not a plain key and value (a line break or another control "
                "character); refusing to write it"
            )
        lines.append(f"{k}: {val}\n")
    return "".join(lines)


def _trusted_link(parent_st, link_st):
    """A symlink only root can have planted or changed: root's, in a
    directory of root's that nobody else can write to."""
    return link_st.st_uid == 0 and parent_st.st_uid == 0 and not parent_st.st_mode & 0o022


def check_dir_path(path):
    """Raise BorgCyrusError if an existing component of path is not a
    directory, or a symlink anyone but root could have planted."""
    path = os.path.abspath(path)
    cur = "/"
    parent_st = os.lstat("/")
    for part in [p for p in path.split("/") if p]:
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            if not _trusted_link(parent_st, st):
                raise BorgCyrusError(f"{cur} is a symlink; refusing to make or change directories through it")
            st = os.stat(cur)
        if not stat.S_ISDIR(st.st_mode):
            raise BorgCyrusError(f"{cur} is not a directory; refusing to make directories below it")
        parent_st = st


def ensure_dir(path, mode, owner=None, parents_mode=0o755):
    """Make path (and missing parents, root's with parents_mode) and return
    True if it was made. owner=(uid, gid): the directory gets that owner and
    mode whether it was made or not; without, an existing one is left as it
    is. Each component is opened with O_NOFOLLOW (a symlink is followed only
    when root alone can have planted it: _trusted_link), so a directory
    swapped for a link is never changed; owner and mode are set through the
    directory's own descriptor, whatever the umask."""
    path = os.path.abspath(path)
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise BorgCyrusError("refusing to make or change / as a directory of a throwaway Cyrus")
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    made = False
    cur = "/"
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            cur = os.path.join(cur, part)
            made = False
            try:
                os.mkdir(part, mode if last else parents_mode, dir_fd=fd)
                made = True
            except FileExistsError:
                pass
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            try:
                nfd = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                lst = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(lst.st_mode):
                    raise BorgCyrusError(f"{cur} is not a directory; refusing to make directories below it") from None
                if not _trusted_link(os.fstat(fd), lst):
                    raise BorgCyrusError(
                        f"{cur} is a symlink; refusing to make or change directories through it"
                    ) from None
                nfd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if made:
                os.fchmod(fd, mode if last else parents_mode)
        if owner is not None:
            os.fchown(fd, *owner)
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return made


def write_new(path, text, mode=0o644):
    """Write a file of ours (O_NOFOLLOW: never through a planted link), mode whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
        os.fchmod(f.fileno(), mode)
        f.write(text)


class Sandbox:
    def __init__(
        self, base, partitions=("default",), legacy_dirs=False, port=None, extra_conf=None, layout=None, tcp=True
    ):
        """layout: optional {key: path} overriding where configdirectory,
        partition-NAME and sievedir live (e.g. on a test filesystem).
        tcp=False: IMAP on a unix socket (imap_socket) only, no ManageSieve."""
        self.base = os.path.abspath(base)
        self.tcp = tcp
        self.port = (port or free_port()) if tcp else None
        self.tools = find_tools()
        self.runner = Runner()
        if not self.tools.has("master"):
            raise BorgCyrusError("Cyrus is not installed (no master binary); apt-get install cyrus-imapd")
        timsieved = os.path.join(self.tools.directory or "", "timsieved")
        self.sieve_port = free_port() if tcp and os.access(timsieved, os.X_OK) else None
        self.uid = pwd.getpwnam(CYRUS_USER).pw_uid
        self.gid = grp.getgrnam(CYRUS_GROUP).gr_gid
        layout = dict(layout or {})
        self.confdir = layout.get("configdirectory", os.path.join(self.base, "conf"))
        self.partitions = {p: layout.get(f"partition-{p}", os.path.join(self.base, f"spool-{p}")) for p in partitions}
        self.sievedir = layout.get("sievedir", os.path.join(self.base, "sieve"))
        self.legacy_dirs = legacy_dirs
        self.extra_conf = dict(extra_conf or {})
        self.imapd_conf = os.path.join(self.base, "imapd.conf")
        self.cyrus_conf = os.path.join(self.base, "cyrus.conf")
        self.pidfile = os.path.join(self.base, "run", "master.pid")
        self.rundir = os.path.join(self.base, "run")
        self.lmtp_socket = os.path.join(self.rundir, "lmtp")
        self.imap_socket = None if tcp else os.path.join(self.rundir, "imap")
        self.log = os.path.join(self.base, "master.log")

    # -- files ---------------------------------------------------------------
    def conf_values(self):
        v = {
            "configdirectory": self.confdir,
            "defaultpartition": next(iter(self.partitions)),
            "sievedir": self.sievedir,
            "proc_path": os.path.join(self.rundir, "proc"),
            "mboxname_lockpath": os.path.join(self.rundir, "lock"),
            "lmtpsocket": self.lmtp_socket,
            "idlesocket": os.path.join(self.rundir, "idle"),
            "notifysocket": os.path.join(self.rundir, "notify"),
            "admins": "cyrus",
            "allowplaintext": "yes",
            "sasl_pwcheck_method": "alwaystrue",
            "sasl_mech_list": "PLAIN LOGIN",
            "unixhierarchysep": "yes",
            "altnamespace": "no",
            "hashimapspool": "yes",
            "mailbox_legacy_dirs": "yes" if self.legacy_dirs else "no",
            "annotation_allow_undefined": "yes",
            "quota_db": "quotalegacy",
            "syslog_prefix": "cyrus-sandbox",
            "umask": "077",
        }
        for name, path in self.partitions.items():
            v[f"partition-{name}"] = path
        v.update(self.extra_conf)
        return v

    def write_config(self):
        conf = render_conf(self.conf_values(), f"imapd.conf of the throwaway Cyrus in {self.base}")
        for p in (self.imapd_conf, self.lmtp_socket, self.imap_socket or ""):
            if CONFIG_UNSAFE.search(p) or '"' in p:
                raise BorgCyrusError(f"{p!r}: a throwaway Cyrus cannot live at a path with a quote or line break")
        ensure_dir(self.base, 0o755)
        write_new(self.imapd_conf, conf)
        c = f"-C {self.imapd_conf}"
        imap = f"127.0.0.1:{self.port}" if self.tcp else self.imap_socket
        write_new(
            self.cyrus_conf,
            "START {\n"
            f"  recover cmd=\"ctl_cyrusdb {c} -r\"\n"
            "}\n"
            "SERVICES {\n"
            f"  imap cmd=\"imapd {c}\" listen=\"{imap}\" prefork=0 maxchild=20\n"
            f"  lmtpunix cmd=\"lmtpd {c}\" listen=\"{self.lmtp_socket}\" prefork=0 maxchild=10\n"
            + (
                f"  sieve cmd=\"timsieved {c}\" listen=\"127.0.0.1:{self.sieve_port}\" prefork=0 maxchild=10\n"
                if self.sieve_port
                else ""
            )
            + "}\n"
            "EVENTS {\n"
            f"  checkpoint cmd=\"ctl_cyrusdb {c} -c\" period=30\n"
            "}\n",
        )

    def run_dirs(self):
        return [self.rundir, os.path.join(self.rundir, "proc"), os.path.join(self.rundir, "lock")]

    def make_dirs(self):
        """The server's directories, the cyrus user's with mode 0750: every
        path is checked first (nothing is changed when one of them runs
        through a symlink or a file), then made and given to cyrus through
        its descriptor (ensure_dir)."""
        dirs = [self.confdir, os.path.join(self.confdir, "db"), self.sievedir, *self.run_dirs()]
        dirs += list(self.partitions.values())
        for d in dirs:
            check_dir_path(d)
        for d in dirs:
            ensure_dir(d, 0o750, owner=(self.uid, self.gid))

    def create(self):
        """Fresh, empty server files."""
        if os.path.exists(self.base):
            self.stop()
            shutil.rmtree(self.base)
        self.write_config()
        self.make_dirs()
        return self

    # -- process ---------------------------------------------------------------
    def master_argv(self):
        return [
            self.tools["master"],
            "-C",
            self.imapd_conf,
            "-M",
            self.cyrus_conf,
            "-p",
            self.pidfile,
            "-d",
            "-L",
            self.log,
        ]

    def borg_cyrus_service(self):
        """The `service:` section of a borg-cyrus config that controls this server."""
        return {
            "manager": "command",
            "pidfile": self.pidfile,
            "start_command": self.master_argv(),
            "stop_timeout": 30,
            "start_timeout": 30,
        }

    def pid(self):
        """pid of the live master (a zombie left for an absent reaper counts as gone).
        The pidfile is in a directory the cyrus user writes: its pid counts only
        when that process is this server's master (root's or cyrus's, started
        with `-C` this server's imapd.conf); else the master is looked for among
        the processes."""
        try:
            pid = int(safeio.read_bytes(self.pidfile, limit=64).split()[0])
        except (OSError, ValueError, IndexError, BorgCyrusError):
            pid = None
        if pid is None or not self._ours(pid):
            pid = next((int(p) for p in os.listdir("/proc") if p.isdigit() and self._ours(int(p))), None)
        if pid is None:
            return None
        st = proc_stat(pid)
        return pid if st and st[1] != "Z" else None

    def _ours(self, pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")[:-1]
            owner = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            return False
        argv = [os.fsdecode(a) for a in argv]
        pairs = set(zip(argv, argv[1:]))
        return (
            owner in (0, self.uid)
            and os.path.basename(argv[0] if argv else "") == "master"
            and (("-C", self.imapd_conf) in pairs)
        )

    def running(self):
        return self.pid() is not None

    def start(self, timeout=20):
        for d in self.run_dirs():
            ensure_dir(d, 0o750, owner=(self.uid, self.gid))
        self.runner.run(self.master_argv(), timeout=60, what="sandbox master")
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with self._connect() as s:
                    if s.recv(100).startswith(b"* OK"):
                        if os.path.exists(self.lmtp_socket):
                            return
            except OSError:
                pass
            time.sleep(0.05)
        where = f"port {self.port}" if self.tcp else self.imap_socket
        raise BorgCyrusError(f"sandbox Cyrus in {self.base} did not come up on {where}; see {self.log}")

    def _connect(self):
        if self.tcp:
            return socket.create_connection(("127.0.0.1", self.port), timeout=1)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1)
        try:
            s.connect(self.imap_socket)
        except OSError:
            s.close()
            raise
        return s

    def where(self):
        """Where IMAP clients reach it, for a report line."""
        return f"127.0.0.1:{self.port}" if self.tcp else "IMAP on a private socket"

    def stop(self, timeout=20):
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid() is None:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
        # children (imapd, lmtpd) exit with the master; give them a moment
        time.sleep(0.1)

    def restart_with_legacy_dirs(self, on):
        """Restart with mailbox_legacy_dirs on or off: new mailboxes are then
        stored by name (as on a server upgraded from 2.x) or by uniqueid."""
        self.stop()
        self.legacy_dirs = on
        self.write_config()
        self.start()

    # -- clients ---------------------------------------------------------------
    def imap(self, user="cyrus"):
        conn = imaplib.IMAP4("127.0.0.1", self.port) if self.tcp else UnixIMAP4(self.imap_socket)
        conn.login(user, "x")
        return conn

    def deliver(self, rcpt, message, sender="sender@example.org"):
        import smtplib

        if isinstance(message, str):
            message = message.encode()
        lm = smtplib.LMTP(self.lmtp_socket)
        try:
            lm.sendmail(sender, [rcpt], message)
        finally:
            lm.quit()

    def managesieve(self, user):
        """A logged-in ManageSieve session (timsieved) as `user`."""
        if not self.sieve_port:
            raise BorgCyrusError("timsieved is not installed; no ManageSieve service in the sandbox")
        return ManageSieve("127.0.0.1", self.sieve_port).login(user, "x")

    def put_sieve(self, user, name, script, active=False):
        """Upload a Sieve script for `user` over ManageSieve (and make it the active one)."""
        ms = self.managesieve(user)
        try:
            ms.putscript(name, script)
            if active:
                ms.setactive(name)
        finally:
            ms.logout()

    def tool(self, name, *args, check=True, input=None, timeout=600):
        """A Cyrus tool against this server (a Result: returncode, stdout, stderr bytes)."""
        return self.runner.run(
            [self.tools[name], "-C", self.imapd_conf, *args], check=check, input=input, timeout=timeout
        )

    def destroy(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
