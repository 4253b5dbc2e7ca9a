"""Depots in the site policy: what each user sees, and every mistake named by file, line and field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.depots.access import READ_ONLY, READ_WRITE, depots_for
from gateway.depots.links import launch_entry
from gateway.policy.load import PolicyFileError, load_policy, load_policy_text

SITES = Path(__file__).resolve().parents[2] / "site_configs"
DEMO = (SITES / "demo.yaml").read_text()
DEPOTS_AT = DEMO.index("\ndepots:\n")
ENDS_AT = DEMO.index("\ncheck:\n")


def with_depots(block: str) -> str:
    """demo.yaml with its depots section replaced by `block` (YAML under `depots:`)."""
    return DEMO[:DEPOTS_AT] + "\ndepots:\n" + block + DEMO[ENDS_AT:]


def problems(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(PolicyFileError) as info:
        load_policy(path)
    return [str(p) for p in info.value.problems]


def line_of(text: str, needle: str) -> int:
    return next(i + 1 for i, line in enumerate(text.splitlines()) if needle in line)


def test_demo_depots_are_for_the_soundscape_lab_and_readable_by_admins() -> None:
    policy = load_policy_text(DEMO)
    lab = policy.depots["soundscape-lab"]
    assert (lab.group, lab.access, lab.read_only_groups) == ("soundscape-lab", "rw", ())
    assert lab.path == "/var/tmp/hpcgate-lab/depots/soundscape-lab"
    ref = policy.depots["reference-calls"]
    assert (ref.group, ref.access, ref.read_only_groups) == ("soundscape-lab", "ro", ("hub-admins",))


def test_each_user_sees_exactly_the_depots_their_groups_allow() -> None:
    policy = load_policy_text(DEMO)
    alice = {d.name: d.access for d in depots_for(policy, ["hpc-users", "soundscape-lab"])}
    carol = {d.name: d.access for d in depots_for(policy, ["hpc-users", "hub-admins"])}
    assert alice == {"soundscape-lab": READ_WRITE, "reference-calls": READ_ONLY}
    assert carol == {"reference-calls": READ_ONLY}
    assert depots_for(policy, ["hpc-users"]) == []
    assert depots_for(policy, []) == []
    # Group names match exactly: no prefixes, no case folding.
    assert depots_for(policy, ["soundscape", "Soundscape-Lab", "soundscape-lab "]) == []


def test_owner_access_wins_over_a_read_only_listing() -> None:
    policy = load_policy_text(with_depots(
        "  shared:\n    path: /srv/shared\n    group: team\n    access: rw\n"
        "    read_only_groups: [guests]\n"))
    [both] = depots_for(policy, ["guests", "team"])
    assert both.access == READ_WRITE
    [guest] = depots_for(policy, ["guests"])
    assert guest.access == READ_ONLY and guest.path == "/srv/shared"


def test_launch_entry_lists_links_under_the_server_root() -> None:
    policy = load_policy_text(DEMO)
    entry = launch_entry(policy, ["hub-admins"], "/home/carol/")
    assert entry == {"dir": "/home/carol/depots",
                     "links": {"reference-calls": "/var/tmp/hpcgate-lab/depots/reference-calls"}}
    assert launch_entry(policy, [], "~")["dir"] == "~/depots"
    assert launch_entry(policy, [], "~")["links"] == {}


@pytest.mark.parametrize("path, plain", [
    ("/srv/depots/../etc", "/srv/etc"),
    ("/srv/depots/lab/", "/srv/depots/lab"),
    ("/srv//depots/lab", "/srv/depots/lab"),
    ("//srv/depots/lab", "/srv/depots/lab"),
    ("/srv/./depots/lab", "/srv/depots/lab"),
])
def test_a_path_not_written_plainly_is_refused_with_the_plain_form(tmp_path: Path, path: str,
                                                                   plain: str) -> None:
    text = with_depots(f"  lab:\n    path: {path}\n    group: soundscape-lab\n")
    [found] = problems(text, tmp_path)
    assert f"line {line_of(text, '    path: ')}, depots.lab.path: " in found
    assert f"must be written plainly, as '{plain}'" in found


def test_nested_and_shared_paths_are_refused(tmp_path: Path) -> None:
    text = with_depots(
        "  outer:\n    path: /srv/depots\n    group: a\n"
        "  inner:\n    path: /srv/depots/inner\n    group: b\n"
        "  twin:\n    path: /srv/depots\n    group: c\n"
        "  sibling:\n    path: /srv/depots-other\n    group: d\n")
    found = problems(text, tmp_path)
    inner = [p for p in found if "depots.inner.path" in p]
    twin = [p for p in found if "depots.twin.path" in p]
    assert len(inner) == 2 and all("depots cannot nest" in p for p in inner)
    assert {re.search(r"inside depot '(\w+)'", p).group(1) for p in inner} == {"outer", "twin"}
    [twin_problem] = twin
    assert twin_problem.endswith("depots.twin.path: depot 'outer' has the same path")
    assert not any("sibling" in p for p in found)  # a common prefix is not nesting
    assert len(found) == 3


def test_field_mistakes_name_the_field(tmp_path: Path) -> None:
    text = with_depots(
        "  nogroup:\n    path: /srv/nogroup\n"
        "  badaccess:\n    path: /srv/bad\n    group: x\n    access: write\n"
        "  shell:\n    path: /srv/shell\n    group: 'x; rm -rf /'\n")
    found = problems(text, tmp_path)
    assert any("depots.nogroup.group: is required" in p for p in found)
    assert any(f"line {line_of(text, 'access: write')}, depots.badaccess.access: must be one of "
               "rw, ro" in p for p in found)
    assert any(f"line {line_of(text, 'rm -rf')}, depots.shell.group: must be a name of letters"
               in p for p in found)
    assert len(found) == 3


def test_read_only_group_mistakes_name_the_entry(tmp_path: Path) -> None:
    text = with_depots(
        "  lab:\n    path: /srv/lab\n    group: soundscape-lab\n"
        "    read_only_groups: [hub-admins, soundscape-lab, hub-admins]\n")
    found = problems(text, tmp_path)
    line = line_of(text, "read_only_groups: [")
    assert found == [
        f"{tmp_path / 'site.yaml'}, line {line}, depots.lab.read_only_groups: the owning group "
        "'soundscape-lab' is listed as read-only as well",
        f"{tmp_path / 'site.yaml'}, line {line}, depots.lab.read_only_groups[2]: 'hub-admins' is "
        "listed twice",
    ]


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "x y"])
def test_a_depot_name_must_make_a_plain_link_name(tmp_path: Path, name: str) -> None:
    text = with_depots(f"  '{name}':\n    path: /srv/x\n    group: g\n")
    [found] = problems(text, tmp_path)
    assert "the name must be a name of letters, digits and . _ + -" in found


def test_relative_path_is_refused(tmp_path: Path) -> None:
    text = with_depots("  lab:\n    path: depots/lab\n    group: g\n")
    [found] = problems(text, tmp_path)
    assert "depots.lab.path: must be an absolute path" in found
