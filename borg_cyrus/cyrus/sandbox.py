"""A throwaway Cyrus server in one directory, on loopback ports.

Used by `borg-cyrus demo`, the restore drill and the tests. Everything (config,
spools, sockets, pidfile) lives under `base`; any login works with any password
(`sasl_pwcheck_method: alwaystrue`), and `cyrus` is the admin. IMAP and, when
timsieved is installed, ManageSieve listen on loopback ports.
"""

import grp
import os
import pwd
import shutil
import signal
import socket
import time

from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.execute import Runner
from borg_cyrus.cyrus.imapview import ManageSieve
from borg_cyrus.cyrus.layout import find_tools
from borg_cyrus.state import proc_stat

CYRUS_USER = "cyrus"
CYRUS_GROUP = "mail"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sandbox:
    def __init__(self, base, partitions=("default",), legacy_dirs=False, port=None, extra_conf=None, layout=None):
        """layout: optional {key: path} overriding where configdirectory,
        partition-NAME and sievedir live (e.g. on a test filesystem)."""
        self.base = os.path.abspath(base)
        self.port = port or free_port()
        self.tools = find_tools()
        self.runner = Runner()
        if not self.tools.has("master"):
            raise BorgCyrusError("Cyrus is not installed (no master binary); apt-get install cyrus-imapd")
        timsieved = os.path.join(self.tools.directory or "", "timsieved")
        self.sieve_port = free_port() if os.access(timsieved, os.X_OK) else None
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
        os.makedirs(self.base, exist_ok=True)
        with open(self.imapd_conf, "w") as f:
            for k, val in self.conf_values().items():
                f.write(f"{k}: {val}\n")
        c = f"-C {self.imapd_conf}"
        with open(self.cyrus_conf, "w") as f:
            f.write(
                "START {\n"
                f"  recover cmd=\"ctl_cyrusdb {c} -r\"\n"
                "}\n"
                "SERVICES {\n"
                f"  imap cmd=\"imapd {c}\" listen=\"127.0.0.1:{self.port}\" prefork=0 maxchild=20\n"
                f"  lmtpunix cmd=\"lmtpd {c}\" listen=\"{self.lmtp_socket}\" prefork=0 maxchild=10\n"
                + (
                    f"  sieve cmd=\"timsieved {c}\" listen=\"127.0.0.1:{self.sieve_port}\" prefork=0 maxchild=10\n"
                    if self.sieve_port
                    else ""
                )
                + "}\n"
                "EVENTS {\n"
                f"  checkpoint cmd=\"ctl_cyrusdb {c} -c\" period=30\n"
                "}\n"
            )
        os.chmod(self.imapd_conf, 0o644)
        os.chmod(self.cyrus_conf, 0o644)

    def make_dirs(self):
        for d in [
            self.confdir,
            os.path.join(self.confdir, "db"),
            self.sievedir,
            self.rundir,
            os.path.join(self.rundir, "proc"),
            os.path.join(self.rundir, "lock"),
            *self.partitions.values(),
        ]:
            os.makedirs(d, exist_ok=True)
            os.chown(d, self.uid, self.gid)
            os.chmod(d, 0o750)

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
        """pid of the live master (a zombie left for an absent reaper counts as gone)."""
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        st = proc_stat(pid)
        return pid if st and st[1] != "Z" else None

    def running(self):
        return self.pid() is not None

    def start(self, timeout=20):
        os.makedirs(os.path.join(self.rundir, "proc"), exist_ok=True)
        os.makedirs(os.path.join(self.rundir, "lock"), exist_ok=True)
        for d in (self.rundir, os.path.join(self.rundir, "proc"), os.path.join(self.rundir, "lock")):
            os.chown(d, self.uid, self.gid)
        self.runner.run(self.master_argv(), timeout=60, what="sandbox master")
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"* OK"):
                        if os.path.exists(self.lmtp_socket):
                            return
            except OSError:
                pass
            time.sleep(0.05)
        raise BorgCyrusError(f"sandbox Cyrus in {self.base} did not come up on port {self.port}; see {self.log}")

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
        import imaplib

        conn = imaplib.IMAP4("127.0.0.1", self.port)
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
