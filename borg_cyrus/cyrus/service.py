"""Stop and start Cyrus: systemd, a SysV init script, or pidfile + command."""

import logging
import os
import signal
import time

from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.safety import cgroups
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
        """Start Cyrus and wait until it runs. Returns False when that cannot be
        waited for: the start is queued behind the stop of the unit this process
        belongs to (stopping_unit()); True otherwise."""
        t0 = time.monotonic()
        if self.manager == "systemd":
            stopping = self.stopping_unit()
            if stopping:
                return self._start_queued(stopping, t0)
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
            return True
        if _poll(self.is_running, t0 + self.cfg["start_timeout"]):
            log.info("Cyrus started in %.2f s", time.monotonic() - t0)
            return True
        raise BorgCyrusError(
            f"Cyrus did not come up within {self.cfg['start_timeout']} s after start ({self.describe()})"
        )

    # -- from inside a unit that systemd is stopping ------------------------
    def stopping_unit(self):
        """The systemd unit this process runs in when systemd is stopping it
        (`systemctl stop`, a start timeout, shutdown), else None. A blocking
        `systemctl start` of Cyrus from there deadlocks when the two units are
        ordered (After=): systemd runs Cyrus's start job only after that stop."""
        if self.manager != "systemd":
            return None
        unit = cgroups.own_unit()
        if not unit or unit == self.cfg["systemd_unit"]:
            return None
        r = self.runner.run(["systemctl", "show", "-P", "ActiveState", unit], changes=False, check=False)
        return unit if r.returncode == 0 and r.stdout.decode().strip() == "deactivating" else None

    def _job_state(self):
        """State of the unit's queued job ("waiting", "running"), or None."""
        r = self.runner.run(
            ["systemctl", "list-jobs", "--no-legend", "--plain", self.cfg["systemd_unit"]], changes=False, check=False
        )
        words = r.stdout.decode(errors="replace").split() if r.returncode == 0 else []
        return words[3] if len(words) >= 4 else None

    def _start_queued(self, stopping, t0):
        unit = self.cfg["systemd_unit"]
        r = self.runner.run(["systemctl", "start", "--no-block", unit], timeout=self.cfg["start_timeout"], check=False)
        if r.returncode != 0 and not self.runner.dry_run:
            why = r.stderr.decode(errors="replace").strip()
            if self._system_state() == "stopping":
                raise BorgCyrusError(
                    f"the system is shutting down: {unit} is not started now (systemctl: {why}); "
                    f"it starts at the next boot if enabled (systemctl is-enabled {unit})"
                )
            raise BorgCyrusError(f"cannot start Cyrus ({self.describe()}): {why}")
        if self.runner.dry_run:
            return True
        deadline = t0 + self.cfg["start_timeout"]
        while time.monotonic() < deadline:
            if self.is_running():
                log.info("Cyrus started in %.2f s", time.monotonic() - t0)
                return True
            job = self._job_state()
            if job == "waiting":
                log.info(
                    "%s is stopping: Cyrus's start is queued (systemctl start --no-block %s) and runs when that "
                    "stop is done",
                    stopping,
                    unit,
                )
                return False
            if job is None and not self.is_running():
                raise BorgCyrusError(f"Cyrus did not come up after start ({self.describe()}): systemctl status {unit}")
            time.sleep(0.05)
        raise BorgCyrusError(
            f"Cyrus did not come up within {self.cfg['start_timeout']} s after start ({self.describe()})"
        )

    def _system_state(self):
        r = self.runner.run(["systemctl", "is-system-running"], changes=False, check=False)
        return r.stdout.decode(errors="replace").strip()
