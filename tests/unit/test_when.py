"""--at DATE: parsing and the choice of archive (restore/when.py)."""

import datetime

import pytest

from borg_cyrus.errors import ConfigError
from borg_cyrus.restore import when

NOW = datetime.datetime(2026, 12, 2, 4, 30, 0)
A = [
    ("host-2026-11-29T03:00:00", datetime.datetime(2026, 11, 29, 3, 0, 0, 500)),
    ("host-2026-11-30T03:00:00", datetime.datetime(2026, 11, 30, 3, 0, 0, 500)),
    ("host-2026-12-01T03:00:00", datetime.datetime(2026, 12, 1, 3, 0, 0, 500)),
]


@pytest.mark.parametrize(
    "text, moment",
    [
        ("2026-11-30", datetime.datetime(2026, 11, 30, 23, 59, 59, 999999)),
        ("2026-11-30 03:00", datetime.datetime(2026, 11, 30, 3, 0)),
        ("2026-11-30T03:00:00.000500", datetime.datetime(2026, 11, 30, 3, 0, 0, 500)),
        ("yesterday", datetime.datetime(2026, 12, 1, 23, 59, 59, 999999)),
        ("today", datetime.datetime(2026, 12, 2, 23, 59, 59, 999999)),
        ("now", NOW),
        ("3 days ago", NOW - datetime.timedelta(days=3)),
        ("12 hours ago", NOW - datetime.timedelta(hours=12)),
        ("2 weeks ago", NOW - datetime.timedelta(weeks=2)),
    ],
)
def test_parse_at(text, moment):
    assert when.parse_at(text, now=NOW) == moment


@pytest.mark.parametrize("text", ["", "last tuesday", "2026-13-01", "3 fortnights ago", "1700000000"])
def test_bad_dates_are_one_clear_line(text):
    with pytest.raises(ConfigError) as e:
        when.parse_at(text, now=NOW)
    assert "--at" in str(e.value) and "\n" not in str(e.value)


def test_pick_at_the_boundaries():
    assert when.pick(A, A[1][1]) == A[1][0]  # exactly at an archive's time: that archive
    assert when.pick(A, A[1][1] - datetime.timedelta(microseconds=1)) == A[0][0]
    assert when.pick(A, when.parse_at("2026-11-30", now=NOW)) == A[1][0]  # a day: its last archive
    assert when.pick(A, NOW) == A[2][0]
    with pytest.raises(ConfigError) as e:
        when.pick(A, datetime.datetime(2026, 11, 28), "2026-11-28")
    assert "no archive was made at or before 2026-11-28 (the oldest is from 2026-11-29 03:00:00)" in str(e.value)
    with pytest.raises(ConfigError):
        when.pick([], NOW)


def test_archive_time_of_borg_list_json():
    assert when.archive_time({"start": "2026-11-30T03:00:00.000500"}) == A[1][1]
    assert when.archive_time({"time": "2026-11-30T03:00:00.000500+01:00"}) == A[1][1]
    assert when.archive_time({}) is None
