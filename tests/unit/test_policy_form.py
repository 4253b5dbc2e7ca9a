"""The spawn form per user: only their partitions, their limits as ranges, everything escaped."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from gateway.policy.form import render_form
from gateway.policy.load import load_policy, load_policy_text

SITES = Path(__file__).resolve().parents[2] / "site_configs"
DEMO = load_policy(SITES / "demo.yaml")
UNIVERSITY = load_policy(SITES / "university-slurm.yaml")
ALICE = ["hpc-users", "soundscape-lab"]
CAROL = ["hpc-users", "hub-admins"]
DAVE = ["hpc-users"]


class _Form(HTMLParser):
    """Collects the form's controls: {name: attrs}, the options of each select, and the text."""

    def __init__(self, html: str):
        super().__init__()
        self.controls: dict[str, dict[str, str | None]] = {}
        self.options: dict[str, list[dict[str, str | None]]] = {}
        self.text: list[str] = []
        self._select: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("input", "select") and a.get("name"):
            self.controls[a["name"] or ""] = a
        if tag == "select":
            self._select = a.get("name")
            self.options[self._select or ""] = []
        if tag == "option" and self._select:
            self.options[self._select].append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def partitions(self) -> list[str | None]:
        return [o["value"] for o in self.options["partition"]]

    def option(self, name: str) -> dict[str, str | None]:
        return next(o for o in self.options["partition"] if o["value"] == name)


def test_alice_and_carol_see_what_their_groups_give_them() -> None:
    alice, carol = _Form(render_form(DEMO, ALICE)), _Form(render_form(DEMO, CAROL))
    assert alice.partitions() == carol.partitions() == ["debug", "long"]
    # soundscape-lab caps long at 12 hours and 8 cores; hub-admins get the partition's 2 days.
    assert alice.option("long")["data-max-walltime"] == "12 hours"
    assert alice.option("long")["data-max-cpus"] == "8"
    assert alice.option("long")["data-max-memory"] == "8 GB"
    assert carol.option("long")["data-max-walltime"] == "2 days"
    assert carol.option("long")["data-max-cpus"] == "16"
    assert carol.option("long")["data-max-memory"] == "15 GB"
    assert render_form(DEMO, ALICE) != render_form(DEMO, CAROL)


def test_hpc_users_alone_get_debug_only_with_tighter_limits() -> None:
    dave = _Form(render_form(DEMO, DAVE))
    assert dave.partitions() == ["debug"]
    assert dave.controls["cpus"]["max"] == "4" and dave.controls["cpus"]["min"] == "1"
    assert "long" not in render_form(DEMO, DAVE).replace("Long-running", "")
    assert "Up to 4 GB" in "".join(dave.text)


def test_defaults_and_ranges_are_shown() -> None:
    form = _Form(render_form(DEMO, CAROL))
    assert "selected" in form.option("debug")  # default_partition
    assert form.controls["cpus"]["value"] == "1" and form.controls["cpus"]["max"] == "16"
    assert form.controls["memory"]["value"] == "1G"
    assert form.controls["walltime"]["value"] == "0:10:00"
    text = "".join(form.text)
    assert "1 to 16 cores." in text and "Up to 30 minutes; e.g. 2:00:00, 90m" in text
    assert "gpus" not in form.controls  # no partition of the demo has GPUs
    assert "account" not in form.controls  # the lab charges no accounts


def test_previous_choice_is_preselected_only_when_still_allowed() -> None:
    form = _Form(render_form(DEMO, CAROL, previous={"partition": ["long"]}))
    assert "selected" in form.option("long")
    assert form.controls["walltime"]["value"] == "1:00:00"
    form = _Form(render_form(DEMO, DAVE, previous={"partition": "long"}))
    assert form.partitions() == ["debug"]


def test_gpus_and_accounts_appear_where_the_policy_has_them() -> None:
    neuro = _Form(render_form(UNIVERSITY, ["hpc-users", "neuro"]))
    assert neuro.partitions() == ["interactive", "standard", "gpu"]
    assert neuro.option("gpu")["data-max-gpus"] == "2"  # the group's share, not the node's 4
    assert "gpus" in neuro.controls
    accounts = [o["value"] for o in neuro.options["account"]]
    assert accounts == ["teaching", "neuro-imaging"]
    selected = [o["value"] for o in neuro.options["account"] if "selected" in o]
    assert selected == ["teaching"]  # hpc-users comes first in the file
    astro = _Form(render_form(UNIVERSITY, ["astro"]))
    assert "gpus" not in astro.controls and astro.partitions() == ["interactive", "standard"]


def test_users_without_a_group_rule_are_told_so() -> None:
    html = render_form(DEMO, ["students"])
    assert "not in any group that may start notebook servers" in html
    assert "<select" not in html


def test_every_text_is_escaped() -> None:
    text = (SITES / "demo.yaml").read_text().replace(
        "description: Quick tests, at most 30 minutes.",
        "description: '<script>alert(1)</script> \"quoted\" & more'")
    html = render_form(load_policy_text(text), CAROL)
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &quot;quoted&quot; &amp; more" in html
    # The only script is the form's own.
    assert html.count("<script>") == 1
