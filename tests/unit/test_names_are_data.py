"""Names from a live server are data: a mail user's `..` folder is backed up
and restored like any other; only what would break a path or a command is
refused, and an admin's restore target may not climb out of its folder."""

import pytest

from borg_cyrus.cyrus import storage
from borg_cyrus.cyrus.mboxlist import Mailbox, admin_name, internal_name
from borg_cyrus.safety import trust

UID = "q0gm2xb7nqbdlh3c9a4ulu8w"
LAY = storage.PathLayout(configdirectory="/c", partitions={"default": "/p"}, sievedir="/s")


@pytest.mark.parametrize(
    "intname, mbtype",
    [
        ("user.alice.^^", "e"),
        ("user.alice.a.^^.b", "e"),
        ("user.alice.^.x", "e"),
        ("DELETED.user.alice.^^.6B176143", "e"),
        ("user.dave.^^", "el"),
        ("user.dave.a.^^.b", "el"),
    ],
)
def test_dot_components_are_usable_and_stay_inside(intname, mbtype):
    mb = Mailbox(intname, UID, "default", mbtype)
    assert trust.mailbox_problem(mb) is None
    assert trust.odd_name(mb) in ("a name component '..'", "a name component '.'")
    d = storage.data_dir(LAY, mb)
    assert trust.inside(d, ["/p"]) and "/../" not in d + "/" and "/./" not in d + "/"
    if mbtype == "el":  # the legacy layout keeps '^' literal, as Cyrus does (d/user/dave/^^)
        assert d.startswith("/p/d/user/dave/") and "^" in d
    # the name Cyrus's tools get maps back to the same mailbox
    assert internal_name(admin_name(intname)) == intname


def test_plain_names_are_not_odd():
    for intname in ("user.alice", "user.alice.dot^in^name", "user.alice.^^^", "user.alice. ^^"):
        assert trust.odd_name(Mailbox(intname, UID, "default")) is None, intname


@pytest.mark.parametrize(
    "intname, why",
    [
        ("user.alice..x", "component ''"),  # the name Cyrus's tools get would be user/alice/x
        ("user.alice.Trash/^^/^^/bob", "component 'Trash/../../bob'"),
        ("user.alice.x\ny", "control character"),
        ("..!user.alice", "domain '..'"),
    ],
)
def test_what_breaks_a_path_or_command_is_refused(intname, why):
    got = trust.mailbox_problem(Mailbox(intname, UID, "default", "el"))
    assert got and why in got


@pytest.mark.parametrize(
    "target",
    [
        "user/alice/x/../../bob/Stolen",
        "user/bob/./Stolen",
        "user/bob//Stolen",
        "user/alice/..",
        "../user/bob",
        "user/bob/Sto\nlen",
    ],
)
def test_admin_target_may_not_climb(target):
    with pytest.raises(trust.UntrustedEntry, match="--into .* has a (name component|control character)"):
        trust.check_target_name(target)


@pytest.mark.parametrize("target", ["user/bob/Restored", "user/bob/Restored/", "user/bob/dot.in.name", "shared/a b"])
def test_admin_target_plain(target):
    assert trust.check_target_name(target) == target


def test_user_names_still_checked():
    for bad in ("alice/../bob", "..", "a\nb", ""):
        with pytest.raises(trust.UntrustedEntry):
            trust.check_userid(bad)
    assert trust.check_userid("alice") == "alice"
