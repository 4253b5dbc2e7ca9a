"""A depot's desired state and the drift from it, computed without touching a disk; ACL attributes
parsed from the bytes the kernel really stores (captured from ext4 with setfacl/getfattr)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.depots.acl import AclEntry, AclError, from_mode, parse_xattr, setfacl_argv
from gateway.depots.provision import (
    ActualState,
    DesiredState,
    ProvisionError,
    check_parents,
    desired_state,
    drift,
)
from gateway.policy.model import Depot

GID, ADMINS, OTHER = 5101, 5102, 100
NAMES = {0: "root", GID: "soundscape-lab", ADMINS: "hub-admins", 5001: "alice", OTHER: "users"}
PATH = "/var/tmp/lab/depots/soundscape-lab"
# `setfacl --set u::rwx,g::rwx,g:100:r-x,m::rwx,o::---` on ext4, read with os.getxattr.
CAPTURED = bytes.fromhex("0200000001000700ffffffff04000700ffffffff080005006400000010000700ffffffff"
                         "20000000ffffffff")


def group_name(gid: int) -> str:
    return NAMES.get(gid, f"gid {gid}")


def user_name(uid: int) -> str:
    return NAMES.get(uid, f"uid {uid}")


def e(text: str) -> AclEntry:
    tag, qualifier, perms = text.split(":")
    return AclEntry(tag, int(qualifier) if qualifier else None, perms)


def depot(access: str = "rw", readers: tuple[str, ...] = ()) -> Depot:
    return Depot(path=PATH, group="soundscape-lab", access=access, read_only_groups=readers)


def as_found(want: DesiredState, **changes: object) -> ActualState:
    """A directory exactly as desired, then with `changes`."""
    actual = ActualState(want.path, "directory", want.uid, want.gid, want.mode, want.access_acl,
                         want.default_acl)
    return dataclasses.replace(actual, **changes)


def test_read_write_depot_is_root_group_2770_with_matching_default_acl() -> None:
    want = desired_state(depot("rw"), GID, {})
    assert (want.uid, want.gid, oct(want.mode)) == (0, GID, "0o2770")
    assert want.access_acl == (e("user::rwx"), e("group::rwx"), e("other::---"))
    # The default ACL is what makes members' new files group-writable despite their umask.
    assert want.default_acl == want.access_acl


def test_read_only_depot_is_2750_and_named_readers_get_a_mask() -> None:
    want = desired_state(depot("ro", ("hub-admins",)), GID, {"hub-admins": ADMINS})
    assert oct(want.mode) == "0o2750"
    assert want.access_acl == (e("user::rwx"), e("group::r-x"), e(f"group:{ADMINS}:r-x"),
                               e("mask::r-x"), e("other::---"))
    rw = desired_state(depot("rw", ("hub-admins",)), GID, {"hub-admins": ADMINS})
    # The mask must not cut the owning group's write permission.
    assert e("mask::rwx") in rw.access_acl and e(f"group:{ADMINS}:r-x") in rw.default_acl


def test_a_reader_group_with_the_owners_gid_adds_no_entry() -> None:
    want = desired_state(depot("rw", ("alias",)), GID, {"alias": GID})
    assert want.access_acl == (e("user::rwx"), e("group::rwx"), e("other::---"))


def test_a_depot_as_desired_has_no_drift() -> None:
    want = desired_state(depot("rw", ("hub-admins",)), GID, {"hub-admins": ADMINS})
    assert drift(want, as_found(want), group_name, user_name) == []


def test_a_mode_changed_by_hand_is_one_plain_sentence() -> None:
    want = desired_state(depot("rw"), GID, {})
    # chmod 0777 on a directory without extended ACL: the mode bits are the access ACL.
    found = drift(want, as_found(want, mode=0o777, access_acl=from_mode(0o777)), group_name,
                  user_name)
    assert [(d.aspect, d.sentence) for d in found] == [(
        "mode", f"{PATH} has mode 0777; it should be 2770 (setgid; group soundscape-lab reads and "
                "writes; others nothing)")]


def test_owner_group_and_acl_drift_are_each_reported() -> None:
    want = desired_state(depot("ro", ("hub-admins",)), GID, {"hub-admins": ADMINS})
    actual = as_found(want, uid=5001, gid=OTHER,
                      access_acl=(e("user::rwx"), e("group::r-x"), e(f"group:{OTHER}:rwx"),
                                  e("mask::r-x"), e("other::---")),
                      default_acl=())
    found = {d.aspect: d.sentence for d in drift(want, actual, group_name, user_name)}
    assert found["owner"] == f"{PATH} is owned by alice; it should be owned by root"
    assert found["group"] == f"{PATH} belongs to group users; it should belong to soundscape-lab"
    assert found["acl"] == (f"{PATH}: the access ACL lacks group:hub-admins:r-x and has "
                            "group:users:rwx that the policy does not give; it should be "
                            "user::rwx,group::r-x,group:hub-admins:r-x,mask::r-x,other::---")
    assert found["default-acl"].startswith(f"{PATH} has no default ACL, so files members create "
                                           "would not stay usable by the group; it should be ")
    assert set(found) == {"owner", "group", "acl", "default-acl"}


def test_missing_and_wrong_kinds() -> None:
    want = desired_state(depot(), GID, {})
    [missing] = drift(want, ActualState(PATH, "missing"), group_name, user_name)
    assert (missing.aspect, missing.sentence) == ("missing", f"{PATH} does not exist")
    [link] = drift(want, ActualState(PATH, "symlink"), group_name, user_name)
    assert link.aspect == "kind" and "is a symbolic link" in link.sentence
    [other] = drift(want, ActualState(PATH, "other"), group_name, user_name)
    assert "is not a directory" in other.sentence


def test_a_lost_setgid_bit_is_drift() -> None:
    want = desired_state(depot(), GID, {})
    [found] = drift(want, as_found(want, mode=0o770), group_name, user_name)
    assert found.aspect == "mode" and "has mode 0770" in found.sentence


def test_parse_the_kernels_acl_attribute() -> None:
    assert parse_xattr(CAPTURED) == (e("user::rwx"), e("group::rwx"), e("group:100:r-x"),
                                     e("mask::rwx"), e("other::---"))


@pytest.mark.parametrize("data", [b"", CAPTURED[:-1], b"\x01\x00\x00\x00" + CAPTURED[4:],
                                  CAPTURED[:4] + b"\x40\x00" + CAPTURED[6:]])
def test_malformed_acl_attributes_are_refused(data: bytes) -> None:
    with pytest.raises(AclError):
        parse_xattr(data)


def test_acl_of_plain_mode_bits_and_setfacl_argv() -> None:
    assert from_mode(0o2750) == (e("user::rwx"), e("group::r-x"), e("other::---"))
    want = desired_state(depot("rw", ("hub-admins",)), GID, {"hub-admins": ADMINS})
    assert setfacl_argv(PATH, want.access_acl, want.default_acl) == [
        "setfacl", "--set",
        "user::rwx,group::rwx,group:5102:r-x,mask::rwx,other::---,default:user::rwx,"
        "default:group::rwx,default:group:5102:r-x,default:mask::rwx,default:other::---",
        "--", PATH]


def test_parents_that_others_could_swap_for_a_symlink_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    (tmp_path / "via-link").symlink_to(real)
    with pytest.raises(ProvisionError, match="symlink"):
        check_parents(str(tmp_path / "via-link" / "depot"))
    open_dir = tmp_path / "scratch"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # writable by all, no sticky bit: a user could plant a link in it
    with pytest.raises(ProvisionError, match="others than root"):
        check_parents(str(open_dir / "lab" / "depot"))
    open_dir.chmod(0o1777)  # like /tmp: the sticky bit keeps others' entries safe
    check_parents(str(open_dir / "depot"))
    check_parents(str(real / "depot"))
