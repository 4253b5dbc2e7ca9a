"""Every field the site policy accepts reaches the code that acts on it.

The test walks the schema: each field must have an entry below, which changes that one field in
a real policy (university-slurm.yaml or pbs-site.yaml) and shows that what its consumer produces
changes. A new field without an entry fails `test_every_field_has_a_consumer`.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.admin.directory import service_connection
from gateway.depots.access import depots_for
from gateway.hub.connections import make_connection
from gateway.hub.jobspec import job_setup
from gateway.hub.scheduling import scheduler_settings, shared
from gateway.policy import PolicyFileError, load_policy_text, render_form, validate_options
from gateway.policy.live import compare_limits
from gateway.policy.model import SitePolicy
from gateway.policy.schema import ListOf, MapOf, Section, fields_of, yaml_key
from gateway.tunnel import hubside, loginnode
from schedulers.registry import make_runner, make_scheduler
from schedulers.slurm_partitions import PartitionLimits

SITES = Path(str(resources.files("site_configs")))
UNIVERSITY = yaml.safe_load((SITES / "university-slurm.yaml").read_text())
# ldap3 reads the CA file when the connection is built: real files of this machine stand in.
CA_FILES = sorted(str(p) for p in Path("/etc/ssl/certs").glob("*.pem"))[:2]
UNIVERSITY["directory"]["ca_cert"] = CA_FILES[0]


def _paths(cls: type, prefix: tuple[str, ...] = ()) -> list[str]:
    out = []
    for f in fields_of(cls):
        kind, path = f.metadata["kind"], (*prefix, yaml_key(f))
        while isinstance(kind, (ListOf, MapOf)):
            if isinstance(kind, MapOf):
                path = (*path, "*")
            kind = kind.item if isinstance(kind, ListOf) else kind.value
        out += _paths(kind.cls, path) if isinstance(kind, Section) else [".".join(path)]
    return out


# -- what each consumer produces from a policy -----------------------------------------------------


def scheduler_view(p: SitePolicy) -> Any:
    settings = scheduler_settings(p.cluster)
    runner = make_runner(settings)
    view = [type(runner).__name__, getattr(runner, "env", None), runner.timeout,
            getattr(runner, "host", None), getattr(runner, "port", None),
            getattr(runner, "known_hosts", None), getattr(runner, "service_user", None),
            runner.key_for_user("alice") if getattr(runner, "key_for_user", None) else None]
    scheduler = make_scheduler(settings, runner)
    view += [type(scheduler).__name__, getattr(scheduler, "jobcomp_file", None),
             getattr(scheduler, "use_sacct", None)]
    return view


def rest_view(p: SitePolicy) -> Any:
    s = scheduler_settings(p.cluster)
    return (s.rest_url, s.rest_api_version, s.jwt_key_file, p.problems())


def watcher_view(p: SitePolicy) -> Any:
    async def intervals() -> tuple[float, float]:
        _, _, watcher = shared(p.cluster)
        return watcher.fast_interval, watcher.slow_interval
    return asyncio.run(intervals())


def job_view(p: SitePolicy) -> Any:
    return job_setup(p, "alice", "/home/alice", "")


def offer_view(p: SitePolicy) -> Any:
    """The form and the validated defaults of every partition, for members of every group."""
    out = []
    for group in p.groups:
        out.append(render_form(p, [group]))
        for part in p.partitions:
            try:
                out.append(validate_options(p, [group], {"partition": part}).job_request_fields())
            except Exception as err:  # noqa: BLE001 - a refusal is a result too
                out.append(str(err))
    return out


def limits_view(p: SitePolicy) -> Any:
    """What check-config says against a live partition (max_nodes is compared there)."""
    live = {name: PartitionLimits(name=name, max_time=None, default_time=None, max_nodes=1,
                                  max_cpus_per_node=None, max_mem_per_node_mb=None,
                                  max_mem_per_cpu_mb=None, def_mem_per_cpu_mb=None, nodes=(),
                                  state="UP", default=False, allow_groups=None, allow_accounts=None)
            for name in p.partitions}
    return [str(x) for x in compare_limits(p, live, {})]


def connection_view(p: SitePolicy) -> Any:
    conn = p.connection
    made = make_connection("alice", conn, "http://127.0.0.1:8081/hub/api")
    view: list[Any] = [type(made).__name__, made.down_timeout]
    for build in (lambda: hubside.settings_from(conn, "http://127.0.0.1:8081/hub/api"),
                  lambda: loginnode.settings_from(conn)):
        try:
            view.append(build())
        except hubside.TunnelConfigError as err:
            view.append(str(err))
    return view


def directory_view(p: SitePolicy) -> Any:
    d = p.directory
    c = service_connection(d, "pw")
    tls = c.server.tls
    return (c.server.host, c.server.port, c.server.ssl, tls.ca_certs_file, tls.validate, c.user,
            c.receive_timeout, d.start_tls, d.bind_password_file, d.group_base_dn)


def depots_view(p: SitePolicy) -> Any:
    return [depots_for(p, [g]) for g in ("astro", "astro-data", "neuro", "teaching")]


def check_view(p: SitePolicy) -> Any:
    from gateway.admin.check import ConfigChecker
    from gateway.admin.report import Report
    from gateway.admin.testjobs import ProbeJobs, TestJobSetup

    checker = ConfigChecker(p, "site.yaml", Report())
    nodes = {name: ("n1", "n2", "n3", "n4", "n5", "n6") for name in p.partitions}
    jobs = ProbeJobs(TestJobSetup(p, None, None, "alice", "/home/alice", nodes), Report())
    return (checker.user, jobs.timeout, jobs.plan())


def policy_report(p: SitePolicy) -> Any:
    """check-config's first section, which names the cluster."""
    from gateway.admin.check import ConfigChecker
    from gateway.admin.report import Report

    checker = ConfigChecker(p, "site.yaml", Report())
    checker.check_policy()
    return checker.report.lines()


def activity_code_view(p: SitePolicy) -> Any:
    """What the job's activity recorder keeps of a cell, with the code policy the job gets."""
    from gateway.job.activity.records import keep_code

    return keep_code(job_setup(p, "alice", "/home/alice", "").activity_code, "print('hi')\n")


def activity_record_view(p: SitePolicy) -> Any:
    """The server extensions the launcher enables for a job with this policy."""
    from gateway.job.launcher import activity_args

    launch = {"activity": job_setup(p, "alice", "/home/alice", "").launch_activity()}
    return activity_args(launch, Path("/home/alice/.hpcgate/servers/default"))


def retention_view(p: SitePolicy) -> Any:
    """The hub store's cutoff: records before it are deleted."""
    from gateway.hub.activity_store import retention_cutoff

    return retention_cutoff(p.activity.retention, 2_000_000_000.0)


def viewers_view(p: SitePolicy) -> Any:
    """Whose activity a member of `teaching` sees (the hub's access rule)."""
    from gateway.hub.activity_access import scope_for

    scope = scope_for("tina", ["teaching"], p.activity.viewers, {"astro": ["ann", "al"]})
    return sorted(scope.users), scope.groups


def server_counts(p: SitePolicy) -> Any:
    """Whether a member of each group may start one more server with 0-4 running."""
    from gateway.policy import PolicyError, check_server_count

    out = []
    for group_name in p.groups:
        for running in range(5):
            try:
                check_server_count(p, [group_name], running)
                out.append(True)
            except PolicyError as err:
                out.append(err.message)
    return out


# -- the table: field -> (a change to the university policy, the consumer that must notice) --------

Change = Callable[[dict[str, Any]], None]


def setter(path: str, value: Any) -> Change:
    def change(doc: dict[str, Any]) -> None:
        keys = path.split(".")
        node = doc
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return change


REST = {"url": "http://slurm-ctl:6820", "api_version": "v0.0.40", "jwt_key_file": "/etc/jwt.key"}


def to_rest(doc: dict[str, Any]) -> None:
    doc["cluster"]["transport"] = "rest"
    doc["cluster"]["rest"] = dict(REST)


def rest_change(field: str, value: Any) -> Change:
    def change(doc: dict[str, Any]) -> None:
        to_rest(doc)
        doc["cluster"]["rest"][field] = value
    return change


def login_node(doc: dict[str, Any]) -> None:
    doc["connection"].update(mode="login-node", login_node_user="svc", login_node_key="/etc/k",
                             hub_api_url="http://10.0.0.1:8081/hub/api")


def conn_change(field: str, value: Any, base: Change | None = None) -> Change:
    def change(doc: dict[str, Any]) -> None:
        if base:
            base(doc)
        doc["connection"][field] = value
    return change


FIRST_PART = next(iter(UNIVERSITY["partitions"]))
FIRST_GROUP = next(iter(UNIVERSITY["groups"]))
LIMITED = next((g, part) for g, rule in UNIVERSITY["groups"].items()
               for part in rule.get("limits", {}))


def part(field: str, value: Any) -> Change:
    return setter(f"partitions.{FIRST_PART}.{field}", value)


def group(field: str, value: Any) -> Change:
    return setter(f"groups.{FIRST_GROUP}.{field}", value)


def group_limit(field: str, value: Any) -> Change:
    return setter(f"groups.{LIMITED[0]}.limits.{LIMITED[1]}.{field}", value)


def env(section: str) -> Change:
    return lambda doc: doc[section].setdefault("environment", {}).update(HPCGATE_PROBE="1")


def depot(field: str, value: Any) -> Change:
    def change(doc: dict[str, Any]) -> None:
        name = next(iter(doc["depots"]))
        doc["depots"][name][field] = value
    return change


REACHES: dict[str, tuple[Change, Callable[[SitePolicy], Any]]] = {
    "cluster.name": (setter("cluster.name", "other"), lambda p: policy_report(p)),
    "cluster.scheduler": (lambda d: d["cluster"].update(scheduler="pbs"), scheduler_view),
    "cluster.transport": (setter("cluster.transport", "sudo"), scheduler_view),
    "cluster.environment.*": (env("cluster"), scheduler_view),
    "cluster.command_path": (setter("cluster.command_path", "/opt/slurm/bin:/usr/bin"), scheduler_view),
    "cluster.command_timeout": (setter("cluster.command_timeout", "2m"), scheduler_view),
    "cluster.ssh.host": (setter("cluster.ssh.host", "login9"), scheduler_view),
    "cluster.ssh.port": (setter("cluster.ssh.port", 2022), scheduler_view),
    "cluster.ssh.known_hosts": (setter("cluster.ssh.known_hosts", "/etc/kh2"), scheduler_view),
    "cluster.ssh.key_template": (setter("cluster.ssh.key_template", "/k/{user}"), scheduler_view),
    "cluster.ssh.service_user": (setter("cluster.ssh.service_user", "svc"), scheduler_view),
    "cluster.rest.url": (rest_change("url", "http://other:6820"), rest_view),
    "cluster.rest.api_version": (rest_change("api_version", "v0.0.39"), rest_view),
    "cluster.rest.jwt_key_file": (rest_change("jwt_key_file", "/etc/other.key"), rest_view),
    "cluster.jobcomp_file": (setter("cluster.jobcomp_file", "/var/log/other.txt"), scheduler_view),
    "cluster.use_sacct": (setter("cluster.use_sacct", True), scheduler_view),
    "cluster.poll_starting": (setter("cluster.poll_starting", 2), watcher_view),
    "cluster.poll_steady": (setter("cluster.poll_steady", 60), watcher_view),
    "job.python": (setter("job.python", "/opt/py/bin/python"), job_view),
    "job.path": (setter("job.path", "/opt/py/bin:/usr/bin"), job_view),
    "job.prologue": (setter("job.prologue", "module load x"), job_view),
    "job.environment.*": (env("job"), job_view),
    "job.extra_directives": (setter("job.extra_directives", ["#SBATCH --exclusive"]), job_view),
    "job.workdir": (setter("job.workdir", "/scratch/{user}"), job_view),
    "job.report_timeout": (setter("job.report_timeout", 60), job_view),
    "job.end_signal": (setter("job.end_signal", 300), job_view),
    "job.walltime_warnings": (setter("job.walltime_warnings", ["30m"]), job_view),
    "default_partition": (lambda d: d.update(default_partition=list(d["partitions"])[-1]), offer_view),
    "accounts.*.description": (
        lambda d: [a.update(description="changed") for a in d["accounts"].values()], offer_view),
    "groups.*.partitions": (setter("groups.astro.partitions", ["standard"]), offer_view),
    "groups.*.accounts": (group("accounts", []), offer_view),
    "groups.*.default_account": (lambda d: d["groups"]["astro"].update(
        accounts=["astro-2025", "teaching"], default_account="teaching"), offer_view),
    "groups.*.max_servers": (group("max_servers", 3), lambda p: server_counts(p)),
    "depots.*.path": (depot("path", "/depots/elsewhere"), depots_view),
    "depots.*.group": (depot("group", "teaching"), depots_view),
    "depots.*.access": (depot("access", "ro"), depots_view),
    "depots.*.read_only_groups": (depot("read_only_groups", ["teaching"]), depots_view),
    "depots.*.description": (depot("description", "changed"), depots_view),
    "connection.mode": (conn_change("mode", "direct"), connection_view),
    "connection.hub_api_url": (conn_change("hub_api_url", "http://127.0.0.1:9/hub/api"),
                               connection_view),
    "connection.ssh_host": (conn_change("ssh_host", "other-host"), connection_view),
    "connection.ssh_port": (conn_change("ssh_port", 2200), connection_view),
    "connection.known_hosts": (conn_change("known_hosts", "/etc/kh3"), connection_view),
    "connection.login_node_user": (conn_change("login_node_user", "svc2", login_node), connection_view),
    "connection.login_node_key": (conn_change("login_node_key", "/etc/k2", login_node),
                                  connection_view),
    "connection.tunnel_user": (conn_change("tunnel_user", "tunnel2"), connection_view),
    "connection.authorized_keys": (conn_change("authorized_keys", "/etc/ak2"), connection_view),
    "connection.first_port": (conn_change("first_port", 41000), connection_view),
    "connection.last_port": (conn_change("last_port", 41999), connection_view),
    "connection.ciphers": (conn_change("ciphers", "aes256-gcm@openssh.com"), connection_view),
    "connection.down_timeout": (conn_change("down_timeout", 5), connection_view),
    "directory.uri": (setter("directory.uri", "ldaps://other:1636"), directory_view),
    "directory.start_tls": (setter("directory.start_tls", True), directory_view),
    "directory.ca_cert": (setter("directory.ca_cert", CA_FILES[1]), directory_view),
    "directory.verify_tls": (setter("directory.verify_tls", False), directory_view),
    "directory.bind_dn": (setter("directory.bind_dn", "cn=other,dc=x"), directory_view),
    "directory.bind_password_file": (setter("directory.bind_password_file", "/etc/pw2"),
                                     directory_view),
    "directory.group_base_dn": (setter("directory.group_base_dn", "ou=g2,dc=x"), directory_view),
    "directory.timeout": (setter("directory.timeout", "20s"), directory_view),
    "check.test_user": (setter("check.test_user", "someone"), check_view),
    "check.job_timeout": (setter("check.job_timeout", "9m"), check_view),
    "check.nodes_per_partition": (setter("check.nodes_per_partition", 5), check_view),
    "activity.record": (setter("activity.record", False), activity_record_view),
    "activity.code": (setter("activity.code", "full"), activity_code_view),
    "activity.retention": (setter("activity.retention", "30d"), retention_view),
    "activity.viewers.*": (setter("activity.viewers", {"astro": ["teaching"]}), viewers_view),
}
for _f, _v in (("max_walltime", "3h"), ("default_walltime", "20m"), ("max_cpus", 3),
               ("default_cpus", 3), ("max_memory", "3G"), ("default_memory", "1500M"),
               ("max_gpus", 5), ("default_gpus", 1)):
    REACHES[f"partitions.*.{_f}"] = (part(_f, _v), offer_view)
    REACHES[f"groups.*.limits.*.{_f}"] = (group_limit(_f, _v), offer_view)
REACHES["partitions.*.max_nodes"] = (part("max_nodes", 4), limits_view)
REACHES["groups.*.limits.*.max_nodes"] = (group_limit("max_nodes", 4), limits_view)
REACHES["partitions.*.description"] = (part("description", "changed"), offer_view)
REACHES["partitions.*.node"] = (part("node", "c42"), offer_view)

# A note in the file for its readers (the help says so): nothing acts on it, by design.
NOTES = {"groups.*.description"}


def test_every_field_has_a_consumer() -> None:
    fields = set(_paths(SitePolicy))
    assert fields - set(REACHES) - NOTES == set(), "fields no test shows reaching their consumer"
    assert set(REACHES) - fields == set(), "entries for fields the schema no longer has"


@pytest.mark.parametrize("path", sorted(REACHES))
def test_the_field_changes_what_its_consumer_does(path: str) -> None:
    change, view = REACHES[path]

    def observe(doc: dict[str, Any]) -> Any:
        try:  # a value the policy's own check refuses is a consumer's answer too (in words)
            return view(load_policy_text(yaml.safe_dump(doc), "site.yaml"))
        except PolicyFileError as err:
            return str(err)

    doc = copy.deepcopy(UNIVERSITY)
    change(doc)
    before, after = observe(copy.deepcopy(UNIVERSITY)), observe(doc)
    assert not isinstance(before, str), before
    assert after != before, f"changing {path} changed nothing its consumer produces"
