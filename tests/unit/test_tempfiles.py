"""state.write_atomic, the one writer of borg-cyrus's replaced files (state,
metrics, patterns, manifest): a new temp file (O_EXCL|O_NOFOLLOW) under an
unpredictable name, in a directory only this user can change. (The attacks
with other users' files are in tests/integration/test_hardening_privs.py.)"""

import os
import stat

import pytest

from borg_cyrus import state
from borg_cyrus.errors import BorgCyrusError


def test_temp_names_are_new_unpredictable_and_never_followed(tmp_path, monkeypatch):
    opened = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *, dir_fd=None):
        if dir_fd is not None and str(path).endswith(".tmp"):
            opened.append((path, flags))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(state.os, "open", spy)
    target = tmp_path / "borg-cyrus.prom"
    for n in range(3):
        state.write_atomic(str(target), f"x {n}\n", 0o644)
    monkeypatch.undo()
    assert len(opened) == 3
    names = [name for name, _ in opened]
    assert len(set(names)) == 3 and not any(str(os.getpid()) in n for n in names), names
    assert all(n.startswith(".borg-cyrus.prom.") for n in names)
    for _, flags in opened:
        assert flags & os.O_EXCL and flags & os.O_NOFOLLOW and flags & os.O_CREAT and not flags & os.O_TRUNC
    assert target.read_text() == "x 2\n" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["borg-cyrus.prom"]


def test_mode_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        state.write_atomic(str(tmp_path / "f"), "x", 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_directory_others_can_write_to_is_refused(tmp_path, mode):
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(BorgCyrusError, match="others can write to"):
        state.write_atomic(str(d / "f"), "x")
    assert os.listdir(d) == []


def test_symlink_in_a_directory_others_can_write_to_is_not_followed(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    real = tmp_path / "real"
    real.mkdir()
    (shared / "link").symlink_to(real)
    with pytest.raises(BorgCyrusError, match="is a symlink in .* not following it"):
        state.write_atomic(str(shared / "link" / "f"), "x")
    assert os.listdir(real) == []


def test_symlink_in_a_private_directory_is_followed(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "abs").symlink_to(real)
    state.write_atomic(str(tmp_path / "link" / "a"), "a")
    state.write_atomic(str(tmp_path / "abs" / "b"), "b")
    assert sorted(os.listdir(real)) == ["a", "b"]


def test_a_file_on_the_way_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(BorgCyrusError, match="is not a directory"):
        state.write_atomic(str(tmp_path / "file" / "f"), "x")


def test_work_directory_parents_made_0755_whatever_the_umask(tmp_path):
    """The cyrus user passes through them to what a run hands it (the drill,
    point-in-time config): under root's umask 077 makedirs would make them 0700."""
    work = tmp_path / "srv" / "backup" / "borg-cyrus"
    old = os.umask(0o077)
    try:
        state.secure_dir(str(work), 0o711)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(work).st_mode) == 0o711
    for d in (tmp_path / "srv", tmp_path / "srv" / "backup"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o755, d
