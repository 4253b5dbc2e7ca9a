"""demo.yaml made concrete for one running lab: its ports, its state directory, its addresses.

The lab picks free ports at its first `up` and derives c2's veth addresses from its directory, so
`site_configs/demo.yaml` holds the default lab's paths and placeholder ports. `lab_site_policy`
fills in what `lab.json` says; `hpcgate demo` and the tests write the result next to the lab.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gateway.lab.accounts import workdir_template

DEMO = Path(str(resources.files("site_configs") / "demo.yaml"))
DEFAULT_LAB = "/var/tmp/hpcgate-lab"  # noqa: S108 - the path demo.yaml is written for
DEFAULT_VENV = "/opt/hpcgate/venv"


# A variant for tests and benchmarks that need to know where a server runs: debug on c1, long on
# c2, and every lab user may use both.
PINNED_NODES: dict[str, Any] = {
    "partitions": {"debug": {"node": "c1"}, "long": {"node": "c2"}},
    "groups": {"hpc-users": {"partitions": ["debug", "long"]}},
}


def with_changes(base: dict[str, Any], *changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with each of `changes` merged in (a new dict; nothing is modified)."""
    import copy

    out = copy.deepcopy(base)
    for change in changes:
        _merge(out, copy.deepcopy(change))
    return out


def lab_site_policy(info: dict[str, Any], password_file: str | Path,
                    demo: Path = DEMO, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """demo.yaml as a dict, pointed at the lab described by `info` (the content of lab.json),
    with `overrides` merged in section by section (tests' variants: another mode, pinned nodes)."""
    text = demo.read_text().replace(DEFAULT_LAB + "/", info["dir"].rstrip("/") + "/")
    # Jobs run the interpreter this hub runs (the default venv, or another one a test run made).
    text = text.replace(DEFAULT_VENV + "/", sys.prefix.rstrip("/") + "/")
    policy = yaml.safe_load(text)
    policy["cluster"]["environment"]["SLURM_CONF"] = info["slurm"]["conf"]
    # Whatever the file says: servers work in this lab's homes, never the shared /home.
    policy["job"]["workdir"] = workdir_template(info["dir"])
    policy["directory"].update(uri=info["ldap"]["uri"], ca_cert=info["ldap"]["ca_cert"],
                               bind_password_file=str(password_file))
    hub_side = info["nodes"]["c2"]["hub_address"] if "c2" in info["nodes"] else "127.0.0.1"
    # Reverse tunnels go to the lab's tunnel endpoint (sshd -i on TCP_NODELAY sockets).
    endpoint = info.get("tunnel") or info["ssh"]
    policy["connection"].update(ssh_host=hub_side, ssh_port=endpoint["port"],
                                known_hosts=endpoint["known_hosts"])
    if "tunnel" in info:
        policy["connection"].update(tunnel_user=info["tunnel"]["user"],
                                    authorized_keys=info["tunnel"]["authorized_keys"])
    _merge(policy, overrides or {})
    return policy


def _merge(into: dict[str, Any], changes: dict[str, Any]) -> None:
    """Nested dicts merged key by key; any other value (None included) replaces."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def write_lab_site(info: dict[str, Any], password_file: str | Path, path: str | Path,
                   overrides: dict[str, Any] | None = None) -> Path:
    """Write the lab's policy file (YAML, with a header saying where it came from)."""
    header = (f"# Generated from site_configs/demo.yaml for the lab in {info['dir']}.\n"
              "# Read demo.yaml for the comments; edit that file, not this one.\n")
    out = Path(path)
    out.write_text(header + yaml.safe_dump(lab_site_policy(info, password_file, overrides=overrides),
                                            sort_keys=False))
    return out
