"""`hpcgate lab`: a small but real cluster on one machine, for tests, CI, the demo and curious admins.

One state directory holds everything: configs, keys, logs, databases, and `lab.json`, which tells
programs where each service listens. Secrets sit in `secrets/` (root only).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

from gateway.lab import accounts, cluster, directory, netns, sshd
from gateway.lab import postgres as postgres_server
from gateway.lab.procs import LabError, free_port, lab_pids, pid_alive, port_is_free, stop_pids
from gateway.lab.tls import make_ca_and_server_cert

__all__ = ["DEFAULT_DIR", "Lab", "LabError"]

DEFAULT_DIR = Path(os.environ.get("HPCGATE_LAB_DIR", "/var/tmp/hpcgate-lab"))  # noqa: S108 - root-owned lab state

# command -> Debian package that provides it
REQUIRED_COMMANDS = {
    "munged": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "slurmrestd": "slurmrestd",
    "slapd": "slapd",
    "slapadd": "slapd",
    "ldapwhoami": "ldap-utils",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "sudo": "sudo",
    "setfacl": "acl",
    "ip": "iproute2",
    "nsenter": "util-linux",
}
DEBIAN_PACKAGES = "slurm-wlm slurmrestd munge slapd ldap-utils openssh-server sudo acl iproute2"
# `up --postgres` needs postgresql too (gateway/lab/postgres.py names it when missing).

SERVICE_ORDER = ("munged", "slurmctld", "slurmd-c1", "slurmd-c2", "slurmrestd", "slapd", "sshd",
                 "tunnel-endpoint")


def missing_packages() -> list[str]:
    search = "/usr/sbin:/usr/bin:/sbin:/bin"
    return sorted({pkg for cmd, pkg in REQUIRED_COMMANDS.items()
                   if shutil.which(cmd, path=search) is None})


class Lab:
    """The lab in one state directory: `up()` (idempotent), `status()`, `down()`."""

    def __init__(self, directory: Path | str = DEFAULT_DIR):
        self.dir = Path(directory).resolve()
        self.state_file = self.dir / "lab.json"

    # -- state -----------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What `up` wrote: endpoints, paths, pids. Empty when the lab was never started here."""
        if not self.state_file.exists():
            return {}
        return json.loads(self.state_file.read_text())

    def _save(self, info: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.chmod(0o644)
        tmp.replace(self.state_file)

    def _secrets(self, extra: tuple[accounts.LabUser, ...] = ()) -> dict[str, str]:
        """Passwords made at the first `up` and kept: users, service account, directory admin."""
        path = self.dir / "secrets" / "passwords.json"
        if path.exists():
            passwords = json.loads(path.read_text())
            missing = [u.name for u in extra if u.name not in passwords]
            if missing:  # `up --users N` on a lab made with fewer
                passwords.update({n: secrets.token_urlsafe(12) for n in missing})
                path.write_text(json.dumps(passwords, indent=2) + "\n")
        else:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            names = [u.name for u in accounts.USERS + extra] + ["svc-hpcgate", "admin"]
            passwords = {n: secrets.token_urlsafe(12) for n in names}
            path.touch(mode=0o600)
            path.write_text(json.dumps(passwords, indent=2) + "\n")
        # The service password alone, for configurations that read a password file.
        service = path.parent / "svc-hpcgate.password"
        if not service.exists():
            service.touch(mode=0o600)
            service.write_text(passwords["svc-hpcgate"] + "\n")
        return passwords

    def _check_host(self) -> None:
        missing = missing_packages()
        if missing:
            raise LabError(
                "The lab needs Debian packages that are not installed: " + " ".join(missing)
                + f".\nInstall them with: apt-get install -y {' '.join(missing)}"
                + "   (or run `make setup`)"
            )
        if os.geteuid() != 0:
            raise LabError("The lab creates Unix accounts and network namespaces: run it as root.")
        # Jobs run as alice/bob/carol and must read slurm.conf and reach the munge socket.
        for parent in [*reversed(self.dir.parents)]:
            if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
                raise LabError(f"The lab directory must be reachable by the lab users, but {parent} "
                               "is not searchable by others. Choose another --dir.")

    # -- up ----------------------------------------------------------------------------------------

    def up(self, nodes: int = 1, fresh_jobs: bool = False, users: int = 0,
           background_jobs: int = 0, postgres: bool = False,
           node_cpus: int | None = None) -> dict[str, Any]:
        """Start what is not running. `fresh_jobs` forgets Slurm's saved jobs when it starts
        from nothing (a test session must not inherit jobs a crashed earlier one left behind).

        A busy cluster on request: `users` extra people (user01..userNN, made like alice) and
        `background_jobs` held jobs of theirs (or of bob and carol) in the queue.

        `postgres` adds the lab's own PostgreSQL (for hubs with `LabHub(database="postgresql")`);
        a lab that has it keeps it at every later `up`. `node_cpus`: the cores each node declares
        (16 unless given; kept by later runs)."""
        if nodes not in (1, 2):
            raise LabError("The lab has one or two compute nodes (--nodes 1 or 2).")
        if background_jobs < 0:
            raise LabError("--background-jobs must be zero or more.")
        self._check_host()
        old = self.info()
        # The directory keeps people added by an earlier `up --users`: so does the description.
        extra = accounts.extra_users(max(users, old.get("extra_users", 0)))
        lab_users = accounts.USERS + extra
        cpus = node_cpus or old.get("node_cpus") or cluster.NODE_CPUS
        if cpus < 1:
            raise LabError("--node-cpus must be at least 1.")
        if old and (old.get("node_count"), old.get("node_cpus", cluster.NODE_CPUS)) != (
                nodes, cpus) and self._alive(old):
            self.down()  # a different shape: restart cleanly rather than reconfigure live daemons
            old = self.info()
        if fresh_jobs and not self._alive(old):
            for sub in ("var/ctld", "var/d"):
                shutil.rmtree(self.dir / sub, ignore_errors=True)
            (self.dir / "log" / "jobcomp.txt").unlink(missing_ok=True)
            # With the jobs go their tunnel keys (a crashed hub's lines would hold ports forever).
            sshd.tunnel_keys_file(self.dir).unlink(missing_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        ports = old.get("ports") or {
            name: free_port() for name in
            ("slurmctld", "slurmd", "slurmrestd", "ldap", "ldaps", "ssh")
        }
        if "tunnel" not in ports:  # labs made before the tunnel endpoint existed
            ports = {**ports, "tunnel": free_port()}
        pids: dict[str, int] = {k: v for k, v in old.get("pids", {}).items() if pid_alive(v)}
        if not pids:
            # Starting from nothing: a port kept from an earlier `up` may since have been taken
            # (another lab's daemon, a hub): pick a new one rather than fail to start.
            ports = {name: port if port_is_free(port) else free_port() for name, port in ports.items()}
        passwords = self._secrets(extra)
        accounts.ensure_accounts(lab_users)
        accounts.ensure_tunnel_account()
        sshd.ensure_tunnel_keys(self.dir)  # the hub account's, whether or not the endpoint runs
        accounts.ensure_workdirs(self.dir, lab_users)

        namespaces = {}
        if nodes == 2:
            ns = netns.namespace_for(self.dir, "c2")
            if not (ns.exists() and pid_alive(pids.get("slurmd-c2"))):
                ns = netns.create(ns, self.dir)
            namespaces["c2"] = ns
        tls_dir = self.dir / "tls"
        if not (tls_dir / "server.crt").exists():
            make_ca_and_server_cert(tls_dir, ["localhost"], ["127.0.0.1"])

        # Memory is enforced where the host allows it (task/cgroup); running daemons keep the
        # setting they started with, so the file matches them.
        if "slurmd-c1" in pids:
            memory_enforced = bool(old.get("slurm", {}).get("memory_enforced"))
        else:
            memory_enforced = (os.environ.get("HPCGATE_LAB_MEMORY_CGROUP", "1") != "0"
                               and cluster.memory_cgroup_usable())
        cluster.write_configs(self.dir, ports["slurmctld"], ports["slurmd"], namespaces, cpus,
                              memory_enforced)
        cluster.ensure_munge_dir_modes(self.dir)
        if "munged" not in pids:
            pids["munged"] = cluster.start_munged(self.dir)
        if "slurmctld" not in pids:
            pids["slurmctld"] = cluster.start_slurmctld(self.dir)
        for node in ["c1", *namespaces]:
            if f"slurmd-{node}" not in pids:
                pids[f"slurmd-{node}"] = cluster.start_slurmd(self.dir, node, namespaces.get(node))
        if "slapd" not in pids:
            pids["slapd"] = directory.start_slapd(self.dir, ports["ldap"], ports["ldaps"],
                                                  passwords["admin"], passwords)
        directory.ensure_groups(self.dir, ports["ldap"], passwords["admin"])
        directory.ensure_extra_users(self.dir, ports["ldap"], passwords["admin"], extra, passwords)
        listen = ["127.0.0.1"] + [ns.host_addr for ns in namespaces.values()]
        if "sshd" not in pids:
            pids["sshd"] = sshd.start_sshd(self.dir, ports["ssh"], listen)
        if "tunnel-endpoint" not in pids:
            pids["tunnel-endpoint"] = sshd.start_tunnel_endpoint(self.dir, ports["tunnel"], listen,
                                                                 accounts.TUNNEL_USER)
        sshd.write_known_hosts(self.dir / "ssh",
                               [(a, ports[p]) for p in ("ssh", "tunnel") for a in listen])
        if "slurmrestd" not in pids:
            pids["slurmrestd"] = cluster.start_slurmrestd(self.dir, ports["slurmrestd"])
        with_postgres = postgres or "postgres" in old
        if with_postgres and "postgres" not in pids:
            pids["postgres"] = postgres_server.start(self.dir)
        cluster.wait_nodes_idle(self.dir, ["c1", *namespaces])
        if background_jobs:
            owners = [u.name for u in extra] or ["bob", "carol"]
            cluster.submit_background_jobs(self.dir, background_jobs, owners)

        info = self._describe(nodes, ports, pids, namespaces, listen, lab_users)
        info["extra_users"] = len(extra)
        info["node_cpus"] = cpus
        if with_postgres:
            info["postgres"] = postgres_server.describe(self.dir)
        info["slurm"]["memory_enforced"] = memory_enforced
        self._save(info)
        return info

    def _describe(self, nodes: int, ports: dict[str, int], pids: dict[str, int],
                  namespaces: dict[str, netns.Namespace], ssh_listen: list[str],
                  lab_users: tuple[accounts.LabUser, ...] = accounts.USERS) -> dict[str, Any]:
        d = self.dir
        node_info: dict[str, Any] = {"c1": {"address": "127.0.0.1", "namespace": None,
                                            "hub_address": "127.0.0.1"}}
        for node, ns in namespaces.items():
            node_info[node] = {"address": ns.node_addr, "namespace": ns.name,
                               "namespace_path": ns.path, "hub_address": ns.host_addr}
        return {
            "dir": str(d),
            "node_count": nodes,
            "nodes": node_info,
            "ports": ports,
            "pids": pids,
            "slurm": {
                "conf": str(d / "etc" / "slurm.conf"),
                "env": cluster.slurm_env(d),
                "partitions": {name: {"max_time": mt, "default_time": dt}
                               for name, (mt, dt, _) in cluster.PARTITIONS.items()},
                "default_partition": "debug",
                "jobcomp": str(d / "log" / "jobcomp.txt"),
                "rest_url": f"http://127.0.0.1:{ports['slurmrestd']}",
                "jwt_key": str(d / "etc" / "jwt_hs256.key"),
            },
            "ldap": {
                "uri": f"ldap://127.0.0.1:{ports['ldap']}",
                "ldaps_uri": f"ldaps://127.0.0.1:{ports['ldaps']}",
                "host": "127.0.0.1",
                "port": ports["ldap"],
                "ldaps_port": ports["ldaps"],
                "ca_cert": str(d / "tls" / "ca.crt"),
                "base_dn": directory.BASE_DN,
                "people_dn": directory.PEOPLE_DN,
                "groups_dn": directory.GROUPS_DN,
                "posix_groups_dn": directory.POSIX_GROUPS_DN,
                "named_groups_dn": directory.NAMED_GROUPS_DN,
                "service_dn": directory.SERVICE_DN,
                "admin_dn": directory.ADMIN_DN,
                "passwords_file": str(d / "secrets" / "passwords.json"),
                "service_password_file": str(d / "secrets" / "svc-hpcgate.password"),
            },
            "ssh": {
                "host": "127.0.0.1",
                "port": ports["ssh"],
                "listen": ssh_listen,
                "known_hosts": str(d / "ssh" / "known_hosts"),
                "user_keys": {u.name: str(d / "ssh" / "users" / f"{u.name}_ed25519")
                              for u in accounts.USERS},
            },
            "tunnel": {
                "host": ssh_listen[-1],  # c2 reaches the hub host on its veth address only
                "port": ports["tunnel"],
                "listen": ssh_listen,
                "user": accounts.TUNNEL_USER,
                "authorized_keys": str(sshd.tunnel_keys_file(d)),
                "hub_user": accounts.HUB_USER,
                "known_hosts": str(d / "ssh" / "known_hosts"),
            },
            # home: the Unix account's (shared by every lab); workdir: this lab's, which the
            # directory gives as homeDirectory and lab policies as job.workdir.
            "users": {u.name: {"uid": u.uid, "gid": accounts.group_gid(u.groups[0]),
                               "home": u.home, "workdir": u.workdir(d), "groups": list(u.groups)}
                      for u in lab_users},
            "logs": str(d / "log"),
        }

    # -- status / down --------------------------------------------------------------------------

    @staticmethod
    def _alive(info: dict[str, Any]) -> bool:
        return any(pid_alive(p) for p in info.get("pids", {}).values())

    def status(self) -> dict[str, Any]:
        """Each service with its pid and whether it runs; `ok` when all of them do."""
        info = self.info()
        services = {name: {"pid": pid, "running": pid_alive(pid)}
                    for name, pid in info.get("pids", {}).items()}
        return {"dir": str(self.dir), "started": bool(info),
                "ok": bool(services) and all(s["running"] for s in services.values()),
                "services": services}

    def down(self) -> None:
        """Stop every lab process (jobs included) and remove the namespaces. Keeps the data."""
        info = self.info()
        pids = info.get("pids", {})
        if pid_alive(pids.get("slurmctld")):
            cluster.cancel_background_jobs(self.dir)
            cluster.cancel_all_jobs(self.dir)
        postgres_server.stop(pids.get("postgres"))  # its own way: a fast shutdown
        for name in reversed(SERVICE_ORDER):
            if name in pids:
                stop_pids([pids[name]])
        # Whatever is left: job steps and their processes, sshd session children.
        stop_pids(lab_pids(self.dir), grace=2)
        for node in ("c2",):
            netns.delete(netns.namespace_for(self.dir, node))
        from gateway.lab.hub import remove_sudoers

        remove_sudoers(self.dir)  # the rules its hubs installed for hpcgate-hub
        if info:
            info["pids"] = {}
            self._save(info)
