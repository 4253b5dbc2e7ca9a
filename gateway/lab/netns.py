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


_NETS = range(20, 220)  # 10.213.20.0/24 .. 10.213.219.0/24


def _subnet_file(lab_dir: Path) -> Path:
    return Path(lab_dir) / "netns-subnet"


def namespace_for(lab_dir: Path, node: str, net: int | None = None) -> Namespace:
    """Names derived from the state directory, and its /24: the one this lab keeps in its
    directory, else one derived from the directory's name (see `create`)."""
    h = hashlib.sha256(str(lab_dir).encode()).hexdigest()
    tag = h[:6]
    if net is None:
        try:
            net = int(_subnet_file(lab_dir).read_text())
        except (OSError, ValueError):
            net = _NETS[int(h[6:10], 16) % len(_NETS)]
    return Namespace(
        name=f"hpcg-{tag}-{node}",
        host_if=f"hg{tag}h",
        node_if=f"hg{tag}n",
        host_addr=f"10.213.{net}.1",
        node_addr=f"10.213.{net}.2",
    )


def _net_of(ns: Namespace) -> int:
    return int(ns.host_addr.split(".")[2])


def create(ns: Namespace, lab_dir: Path | None = None) -> Namespace:
    """Make the namespace and its veth pair. The /24 derived from the directory may be in use
    already (another lab; 200 choices): then the next free one is taken and kept in the lab's
    directory, so that this lab comes back on it. Returns the namespace as made."""
    if ns.exists():
        delete(ns)
    taken = run(["ip", "-o", "-4", "addr", "show"]).stdout
    start = _net_of(ns)
    for step in range(len(_NETS)):
        net = _NETS[(_NETS.index(start) + step) % len(_NETS)] if start in _NETS else _NETS[step]
        if f" 10.213.{net}." not in taken:
            break
    else:
        raise LabError("Every address range 10.213.20-219.0/24 is in use on this machine: stop "
                       "a lab (hpcgate lab down --dir ...) first.")
    if net != start:
        ns = Namespace(ns.name, ns.host_if, ns.node_if, f"10.213.{net}.1", f"10.213.{net}.2")
        if lab_dir is not None:
            _subnet_file(lab_dir).write_text(f"{net}\n")
    run(["ip", "netns", "add", ns.name])
    run(["ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.node_if])
    run(["ip", "link", "set", ns.node_if, "netns", ns.name])
    run(["ip", "addr", "add", f"{ns.host_addr}/24", "dev", ns.host_if])
    run(["ip", "link", "set", ns.host_if, "up"])
    run(["ip", "netns", "exec", ns.name, "ip", "link", "set", "lo", "up"])
    run(["ip", "netns", "exec", ns.name, "ip", "addr", "add", f"{ns.node_addr}/24", "dev", ns.node_if])
    run(["ip", "netns", "exec", ns.name, "ip", "link", "set", ns.node_if, "up"])
    return ns


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
