"""Stop and start Cyrus: systemd, a SysV init script, or pidfile + command."""

import logging
import os
import signal
import time

from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.state import proc_stat

log = logging.getLogger(__name__)

MASTER_NAMES = ("master", "cyrmaster", "cyrus-master")


def _exited(pid):
    st = proc_stat(pid)
    return st is None or st[1] == "Z"


def _poll(cond, deadline):
    """True as soon as cond() holds, False at the deadline."""
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


class Service:
    def __init__(self, cfg, runner):
        self.cfg = cfg
        self.runner = runner
        self.manager = self._pick(cfg.get("manager", "auto"))

    def _pick(self, manager):
        if manager != "auto":
            return manager
        if os.path.isdir("/run/systemd/system"):
            return "systemd"
        if os.access(self.cfg["init_script"], os.X_OK) and not self.cfg.get("start_command"):
            return "sysv"
        return "command"

    # -- state -------------------------------------------------------------
    def master_pid(self):
        """pid of the running master from the pidfile, or None."""
        try:
            with open(self.cfg["pidfile"]) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        st = proc_stat(pid)
        return pid if st and st[0] in MASTER_NAMES and st[1] != "Z" else None

    def is_running(self):
        if self.manager == "systemd":
            r = self.runner.run(
                ["systemctl", "is-active", "--quiet", self.cfg["systemd_unit"]], changes=False, check=False
            )
            return r.returncode == 0
        return self.master_pid() is not None

    def describe(self):
        if self.manager == "systemd":
            return f"systemd unit {self.cfg['systemd_unit']}"
        if self.manager == "sysv":
            return f"init script {self.cfg['init_script']}"
        return f"pidfile {self.cfg['pidfile']} + start_command {self.cfg.get('start_command') or '(unset)'}"

    # -- actions -----------------------------------------------------------
    def stop(self):
        t0 = time.monotonic()
        if self.manager == "systemd":
            self.runner.run(["systemctl", "stop", self.cfg["systemd_unit"]], timeout=self.cfg["stop_timeout"])
        elif self.manager == "sysv":
            self.runner.run([self.cfg["init_script"], "stop"], timeout=self.cfg["stop_timeout"])
            self._wait_gone(t0)
        else:
            pid = self.master_pid()
            if pid is None:
                return
            if self.runner.dry_run:
                log.info("dry run: would send SIGTERM to Cyrus master pid %d", pid)
                return
            log.info("stopping Cyrus master (pid %d)", pid)
            os.kill(pid, signal.SIGTERM)
            self._wait_gone(t0, pid)
        log.info("Cyrus stopped in %.2f s", time.monotonic() - t0)

    def _wait_gone(self, t0, pid=None):
        if self.runner.dry_run:
            return

        def gone():
            cur = pid if pid is not None else self.master_pid()
            return cur is None or _exited(cur)

        if _poll(gone, t0 + self.cfg["stop_timeout"]):
            return
        cur = pid if pid is not None else self.master_pid()
        if cur is not None and self.manager == "command":
            # seen once with Cyrus 3.6: a master spinning after SIGTERM; it must not
            # be mistaken for a running server when it is started again
            log.warning("Cyrus master (pid %d) ignored SIGTERM for %d s; killing it", cur, self.cfg["stop_timeout"])
            os.kill(cur, signal.SIGKILL)
            _poll(lambda: _exited(cur), time.monotonic() + 10)
            return
        raise BorgCyrusError(
            f"Cyrus master did not stop within {self.cfg['stop_timeout']} s; check it and raise service.stop_timeout"
        )

    def start(self):
        t0 = time.monotonic()
        if self.manager == "systemd":
            self.runner.run(["systemctl", "start", self.cfg["systemd_unit"]], timeout=self.cfg["start_timeout"])
        elif self.manager == "sysv":
            self.runner.run([self.cfg["init_script"], "start"], timeout=self.cfg["start_timeout"], daemon=True)
        else:
            argv = self.cfg.get("start_command")
            if not argv:
                raise BorgCyrusError(
                    "cannot start Cyrus: service.start_command is not set; set it, e.g. [/usr/sbin/cyrmaster, -d]"
                )
            self.runner.run(argv, timeout=self.cfg["start_timeout"], daemon=True)
        if self.runner.dry_run:
            return
        if _poll(self.is_running, t0 + self.cfg["start_timeout"]):
            log.info("Cyrus started in %.2f s", time.monotonic() - t0)
            return
        raise BorgCyrusError(
            f"Cyrus did not come up within {self.cfg['start_timeout']} s after start ({self.describe()})"
        )
