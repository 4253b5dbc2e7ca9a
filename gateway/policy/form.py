"""The spawn form, built per user from the policy and their groups.

Only the partitions the user may use appear; each field shows its range and a sensible default.
Every piece of text (names, descriptions, limits) is HTML-escaped. The browser's min/max are a
courtesy: `validate.py` checks everything again on the server.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.policy.durations import MEMORY_EXAMPLES, format_memory, format_memory_input
from gateway.policy.model import SitePolicy
from gateway.policy.rules import PartitionOffer, UserRules, rules_for
from schedulers.durations import WALLTIME_EXAMPLES, format_form, format_words


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _summary(offer: PartitionOffer) -> str:
    lim = offer.limits
    parts = [f"up to {format_words(lim.max_walltime)}", f"{lim.max_cpus} cores",
             f"{format_memory(lim.max_memory)} memory"]
    if lim.max_gpus:
        parts.append(f"{lim.max_gpus} GPU{'s' if lim.max_gpus != 1 else ''}")
    return ", ".join(parts)


def _option(offer: PartitionOffer, selected: bool) -> str:
    lim = offer.limits
    data = {
        "max-cpus": lim.max_cpus, "default-cpus": lim.default_cpus,
        "max-memory": format_memory(lim.max_memory),
        "default-memory": format_memory_input(lim.default_memory),
        "max-gpus": lim.max_gpus, "default-gpus": lim.default_gpus,
        "max-walltime": format_words(lim.max_walltime),
        "default-walltime": format_form(lim.default_walltime),
    }
    attrs = " ".join(f'data-{k}="{_e(v)}"' for k, v in data.items())
    label = f"{offer.name} ({_summary(offer)})"
    sel = " selected" if selected else ""
    return f'<option value="{_e(offer.name)}" {attrs}{sel}>{_e(label)}</option>'


# What the browser accepts as a walltime while typing (the server parses it properly): 90, 1:30,
# 1:30:00, 2-00:00:00, 2h, 90m, 1 day 12 hours...
_WALLTIME_PATTERN = r"[0-9][0-9a-zA-Z :.\-]{0,39}"


def _help(field: str, text: str) -> str:
    return f'<div class="form-text" id="hpcgate-{field}-help">{_e(text)}</div>'


# Keeps min/max/help in step with the chosen partition. Reads only data-* attributes, which are
# escaped above; the server validates regardless of what this does.
_SCRIPT = """<script>
(function () {
  var sel = document.getElementById("hpcgate-partition");
  if (!sel) { return; }
  function set(id, text) { var el = document.getElementById(id); if (el) { el.textContent = text; } }
  sel.addEventListener("change", function () {
    var d = sel.options[sel.selectedIndex].dataset;
    var cpus = document.getElementById("hpcgate-cpus");
    cpus.max = d.maxCpus; cpus.value = d.defaultCpus;
    set("hpcgate-cpus-help", "1 to " + d.maxCpus + " cores.");
    document.getElementById("hpcgate-memory").value = d.defaultMemory;
    set("hpcgate-memory-help", "Up to " + d.maxMemory + "; e.g. @MEM@.");
    document.getElementById("hpcgate-walltime").value = d.defaultWalltime;
    set("hpcgate-walltime-help", "Up to " + d.maxWalltime + "; e.g. @WALL@.");
    var gpus = document.getElementById("hpcgate-gpus");
    if (gpus) { gpus.max = d.maxGpus; gpus.value = d.defaultGpus;
      set("hpcgate-gpus-help", "0 to " + d.maxGpus + " GPUs."); }
  });
})();
</script>""".replace("@MEM@", MEMORY_EXAMPLES).replace(
    "@WALL@", WALLTIME_EXAMPLES)


def render_form(policy: SitePolicy, groups: Iterable[str],
                previous: Mapping[str, Any] | None = None,
                error: tuple[str | None, str] | None = None) -> str:
    """The spawn form's HTML for a member of `groups`.

    `previous` may hold the user's last options (JupyterHub's `user_options`, or what a refused
    form held): its partition is preselected when the user may still use it, and its other
    values fill the fields (escaped, cut short), so "edit and relaunch" and a refused form keep
    what the user typed. `error` is (field or None, sentence): the sentence stands next to that
    field, or above the form.
    """
    rules = rules_for(policy, groups)
    if not rules.may_spawn:
        return ('<div class="alert alert-warning">Your account is not in any group that may start '
                "notebook servers on this cluster. Ask the cluster's administrators for access."
                "</div>")
    # Each account's option shows what the policy says it is for.
    labels = {a: f"{a}: {acc.description}" for a, acc in policy.accounts.items() if acc.description}
    chosen = _previous_partition(rules, previous)
    values = _previous_values(previous) if previous and chosen == _single(previous.get("partition")) \
        else {}
    return _render(rules, chosen, labels, values, error)


def _single(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if len(value) == 1 else None
    return value if isinstance(value, str) else None


def _previous_values(previous: Mapping[str, Any]) -> dict[str, str]:
    """The user's own earlier values, to show again (never trusted: the server validates)."""
    out = {}
    for key in ("cpus", "memory", "gpus", "walltime", "account"):
        value = _single(previous.get(key))
        if value is None and isinstance(previous.get(key), int):
            value = str(previous[key])
        if value is not None and len(value) <= 64 and value.isprintable():
            out[key] = value
    return out


def _previous_partition(rules: UserRules, previous: Mapping[str, Any] | None) -> str:
    value = _single((previous or {}).get("partition"))
    if value is not None and value in rules.partitions:
        return value
    assert rules.default_partition is not None
    return rules.default_partition


def _field_error(field: str, error: tuple[str | None, str] | None) -> tuple[str, str]:
    """(attributes for the input, the sentence's element) when `error` concerns `field`."""
    if error is None or error[0] != field:
        return f'aria-describedby="hpcgate-{field}-help"', ""
    return (f'aria-describedby="hpcgate-{field}-error hpcgate-{field}-help" aria-invalid="true"',
            f'<div class="invalid-feedback d-block" id="hpcgate-{field}-error" role="alert">'
            f"{_e(error[1])}</div>")


def _render(rules: UserRules, chosen: str, account_labels: Mapping[str, str],
            values: Mapping[str, str] | None = None,
            error: tuple[str | None, str] | None = None) -> str:
    offer = rules.partitions[chosen]
    lim = offer.limits
    values = values or {}
    out = ['<div class="hpcgate-form">']
    if error is not None and error[0] not in ("partition", "cpus", "memory", "gpus", "walltime",
                                              "account"):
        out.append(f'<div class="alert alert-danger" role="alert" id="hpcgate-form-error">'
                   f"{_e(error[1])}</div>")
    attrs = {f: _field_error(f, error) for f in ("partition", "cpus", "memory", "gpus", "walltime",
                                                  "account")}
    options = "\n".join(_option(o, o.name == chosen) for o in rules.partitions.values())
    out.append('<div class="mb-3"><label class="form-label" for="hpcgate-partition">Partition</label>'
               f'<select class="form-select" id="hpcgate-partition" name="partition" '
               f'{attrs["partition"][0]}>{options}</select>{attrs["partition"][1]}')
    descriptions = "".join(f"<li><strong>{_e(o.name)}</strong>: {_e(o.description)} "
                           f"({_e(_summary(o))})</li>"
                           for o in rules.partitions.values())
    out.append(f'<ul class="form-text" id="hpcgate-partition-help">{descriptions}</ul></div>')

    out.append('<div class="mb-3"><label class="form-label" for="hpcgate-cpus">Cores</label>'
               f'<input class="form-control" type="number" id="hpcgate-cpus" name="cpus" min="1" '
               f'max="{lim.max_cpus}" step="1" value="{_e(values.get("cpus", lim.default_cpus))}" required '
               f'{attrs["cpus"][0]}>{attrs["cpus"][1]}'
               + _help("cpus", f"1 to {lim.max_cpus} cores.") + "</div>")
    out.append('<div class="mb-3"><label class="form-label" for="hpcgate-memory">Memory</label>'
               '<input class="form-control" type="text" id="hpcgate-memory" name="memory" '
               f'value="{_e(values.get("memory", format_memory_input(lim.default_memory)))}" required '
               'pattern="[0-9]+(\\.[0-9]+)? ?([KkMmGgTt]([iI]?[bB])?)?" '
               f'{attrs["memory"][0]}>{attrs["memory"][1]}'
               + _help("memory", f"Up to {format_memory(lim.max_memory)}; e.g. {MEMORY_EXAMPLES}.")
               + "</div>")
    if any(o.limits.max_gpus for o in rules.partitions.values()):
        out.append('<div class="mb-3"><label class="form-label" for="hpcgate-gpus">GPUs</label>'
                   f'<input class="form-control" type="number" id="hpcgate-gpus" name="gpus" min="0" '
                   f'max="{lim.max_gpus}" step="1" value="{_e(values.get("gpus", lim.default_gpus))}" '
                   f'{attrs["gpus"][0]}>{attrs["gpus"][1]}'
                   + _help("gpus", f"0 to {lim.max_gpus} GPUs.") + "</div>")
    out.append('<div class="mb-3"><label class="form-label" for="hpcgate-walltime">Walltime</label>'
               '<input class="form-control" type="text" id="hpcgate-walltime" name="walltime" '
               f'value="{_e(values.get("walltime", format_form(lim.default_walltime)))}" required '
               f'pattern="{_WALLTIME_PATTERN}" {attrs["walltime"][0]}>{attrs["walltime"][1]}'
               + _help("walltime", f"Up to {format_words(lim.max_walltime)}; "
                                   f"e.g. {WALLTIME_EXAMPLES}.")
               + "</div>")
    if rules.accounts:
        picked = values.get("account") if values.get("account") in rules.accounts \
            else rules.default_account
        opts = "".join(f'<option value="{_e(a)}"{" selected" if a == picked else ""}>'
                       f"{_e(account_labels.get(a) or a)}</option>" for a in rules.accounts)
        out.append('<div class="mb-3"><label class="form-label" for="hpcgate-account">Account</label>'
                   f'<select class="form-select" id="hpcgate-account" name="account" '
                   f'{attrs["account"][0]}>{opts}</select>{attrs["account"][1]}'
                   + _help("account", "The account this job's time is charged to.") + "</div>")
    out.append("</div>")
    out.append(_SCRIPT)
    return "\n".join(out)
