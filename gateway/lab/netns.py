"""Extra hosts as network namespaces: a compute node the hub can reach only on a veth address."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from gateway.lab.procs import LabError, run


@dataclass(frozen=True)
class Namespace:
    name: str
    host_if: str
    node_if: str
    host_addr: str
    node_addr: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def exists(self) -> bool:
        return Path(self.path).exists()


def namespace_for(lab_dir: Path, node: str) -> Namespace:
    """Names and a /24 derived from the state directory, so two labs on one machine do not collide."""
    h = hashlib.sha256(str(lab_dir).encode()).hexdigest()
    tag = h[:6]
    net = 20 + int(h[6:10], 16) % 200
    return Namespace(
        name=f"hpcg-{tag}-{node}",
        host_if=f"hg{tag}h",
        node_if=f"hg{tag}n",
        host_addr=f"10.213.{net}.1",
        node_addr=f"10.213.{net}.2",
    )


def create(ns: Namespace) -> None:
    if ns.exists():
        delete(ns)
    # The /24 comes from a hash of the directory (200 choices): two labs may meet on one.
    subnet = ns.host_addr.rsplit(".", 1)[0] + "."
    taken = run(["ip", "-o", "-4", "addr", "show"]).stdout
    if f" {subnet}" in taken:
        raise LabError(f"The address range {subnet}0/24 this lab's directory maps to is already in use "
                       "on this machine (another lab?): choose another --dir.")
    run(["ip", "netns", "add", ns.name])
    run(["ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.node_if])
    run(["ip", "link", "set", ns.node_if, "netns", ns.name])
    run(["ip", "addr", "add", f"{ns.host_addr}/24", "dev", ns.host_if])
    run(["ip", "link", "set", ns.host_if, "up"])
    run(["ip", "netns", "exec", ns.name, "ip", "link", "set", "lo", "up"])
    run(["ip", "netns", "exec", ns.name, "ip", "addr", "add", f"{ns.node_addr}/24", "dev", ns.node_if])
    run(["ip", "netns", "exec", ns.name, "ip", "link", "set", ns.node_if, "up"])


def delete(ns: Namespace) -> None:
    # Deleting the namespace destroys its veth end, and with it the peer on the host.
    if ns.exists():
        run(["ip", "netns", "delete", ns.name], check=False)
    run(["ip", "link", "delete", ns.host_if], check=False)


def nsenter_argv(ns: Namespace, hostname: str, argv: list[str]) -> list[str]:
    """Run argv inside the namespace with its own hostname.

    nsenter, not `ip netns exec`: the latter remounts /sys and slurmd 22.05 then fails on cgroups.
    """
    script = 'hostname "$0" && exec "$@"'
    return ["nsenter", f"--net={ns.path}", "unshare", "--uts", "sh", "-c", script, hostname, *argv]
