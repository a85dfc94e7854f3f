"""What a test run costs, and how far it got: a pytest plugin (hooks imported
by tests/conftest.py).

- A line each time a test file is done: files done of all, its tests' outcomes
  and time, the run's time so far. Under xdist the controller prints it.
- At the end, a table of the files by cost (setup + call + teardown of their
  tests, summed: worker-seconds under xdist).
- With BORG_CYRUS_TIMINGS=FILE, one JSON line per file is appended to FILE
  ({"lane", "file", "seconds", "tests", "outcomes"}; the lane from
  BORG_CYRUS_LANE), which tests/lanes.py turns into CI's per-lane table.
"""

import collections
import json
import os
import time

_state = {
    "t0": None,
    "totals": None,  # file -> number of tests collected
    "seen": collections.Counter(),  # file -> tests whose teardown was reported
    "seconds": collections.defaultdict(float),
    "outcomes": collections.defaultdict(collections.Counter),
    "done": 0,
}


def _file(nodeid):
    return nodeid.split("::", 1)[0]


def _is_worker(config):
    return hasattr(config, "workerinput")


def clock(seconds):
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


def _count(nodeids):
    return collections.Counter(_file(n) for n in nodeids)


def pytest_sessionstart(session):
    _state["t0"] = time.monotonic()


def pytest_collection_finish(session):
    if not _is_worker(session.config):
        _state["totals"] = _count(i.nodeid for i in session.items)


class _XdistHooks:
    """Registered only where xdist is loaded (its hook is unknown elsewhere)."""

    @staticmethod
    def pytest_xdist_node_collection_finished(node, ids):
        if not _state["totals"]:
            _state["totals"] = _count(ids)


def pytest_runtest_logreport(report):
    f = _file(report.nodeid)
    _state["seconds"][f] += report.duration
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _state["outcomes"][f][report.outcome] += 1
    elif report.when == "teardown" and report.failed:
        _state["outcomes"][f]["error"] += 1
    if report.when != "teardown":
        return
    _state["seen"][f] += 1
    totals = _state["totals"] or {}
    if totals and _state["seen"][f] == totals.get(f):
        _state["done"] += 1
        _progress(f, totals)


def _progress(f, totals):
    tr = _terminal()
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(_state["outcomes"][f].items()))
    line = (
        f"[{_state['done']}/{len(totals)} files, {clock(time.monotonic() - _state['t0'])}] "
        f"{f}: {outcomes or 'nothing run'} in {_state['seconds'][f]:.1f} s"
    )
    if tr is None:
        print(line, flush=True)
    else:
        tr.ensure_newline()
        tr.write_line(line)


_config = {}


def pytest_configure(config):
    _config["config"] = config
    if config.pluginmanager.hasplugin("xdist") and not _is_worker(config):
        config.pluginmanager.register(_XdistHooks(), "borg-cyrus-timing-xdist")


def _terminal():
    config = _config.get("config")
    return config.pluginmanager.get_plugin("terminalreporter") if config else None


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _is_worker(config) or not _state["seconds"]:
        return
    tr = terminalreporter
    rows = sorted(_state["seconds"].items(), key=lambda kv: -kv[1])
    total = sum(_state["seconds"].values())
    wall = time.monotonic() - _state["t0"]
    tr.section(f"cost per test file ({len(rows)} files, {total:.0f} s of tests in {wall:.0f} s wall)")
    for f, secs in rows:
        n = sum(_state["outcomes"][f].values())
        tr.write_line(f"{secs:8.1f} s  {n:4d} tests  {f}")
    out = os.environ.get("BORG_CYRUS_TIMINGS")
    if out:
        lane = os.environ.get("BORG_CYRUS_LANE", "")
        with open(out, "a") as fh:
            for f, secs in rows:
                outcomes = dict(_state["outcomes"][f])
                rec = {"lane": lane, "file": f, "seconds": round(secs, 2), "tests": sum(outcomes.values())}
                fh.write(json.dumps({**rec, "outcomes": outcomes}) + "\n")
