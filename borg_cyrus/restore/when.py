"""Archives by time: `--at DATE` picks the newest archive made at or before
DATE, for every restore verb and verify.

DATE: `2026-11-24` (the end of that day), `2026-11-24 03:00` or
`2026-11-24T03:00:00`, `yesterday`, `today`, `now`, `3 days ago`,
`12 hours ago`, `2 weeks ago`; local time, like the archive times borg lists.
"""

import datetime
import re

from borg_cyrus.errors import ConfigError

_AGO = re.compile(r"^\s*(\d+)\s*(minute|min|hour|h|day|d|week|w)s?\s+ago\s*$", re.I)
_UNITS = {"minute": 60, "min": 60, "hour": 3600, "h": 3600, "day": 86400, "d": 86400, "week": 604800, "w": 604800}
_FORMATS = ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M")


def parse_at(text, now=None):
    """The moment DATE names, a naive local datetime; ConfigError (one line) if it names none."""
    now = now or datetime.datetime.now()
    t = (text or "").strip()
    low = t.lower()
    end_of = datetime.time(23, 59, 59, 999999)
    if low == "now":
        return now
    if low == "today":
        return datetime.datetime.combine(now.date(), end_of)
    if low == "yesterday":
        return datetime.datetime.combine(now.date() - datetime.timedelta(days=1), end_of)
    m = _AGO.match(t)
    if m:
        return now - datetime.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2).lower()])
    try:
        return datetime.datetime.combine(datetime.date.fromisoformat(t), end_of)
    except ValueError:
        pass
    for fmt in _FORMATS:
        try:
            return datetime.datetime.strptime(t, fmt)
        except ValueError:
            continue
    raise ConfigError(
        f"--at {text!r} is not a date: give e.g. 2026-11-24, '2026-11-24 03:00', yesterday or '3 days ago'"
    )


def archive_time(entry):
    """The naive local start time of a `borg list --json` archive entry, or None."""
    for key in ("start", "time"):
        value = entry.get(key)
        if value:
            try:
                return datetime.datetime.fromisoformat(value).replace(tzinfo=None)
            except ValueError:
                continue
    return None


def pick(archives, at, text=None):
    """The name of the newest of [(name, time)] made at or before `at`; ConfigError if none."""
    dated = [(t, n) for n, t in archives if t is not None]
    before = [(t, n) for t, n in dated if t <= at]
    if before:
        return max(before)[1]
    oldest = min(dated)[0].strftime("%Y-%m-%d %H:%M:%S") if dated else None
    shown = text or at.strftime("%Y-%m-%d %H:%M:%S")
    raise ConfigError(
        f"no archive was made at or before {shown}"
        + (f" (the oldest is from {oldest})" if oldest else " (the repository has none)")
    )
