"""`hpcgate check-config SITE.yaml`: does this policy work on this cluster, for real users?

Each check runs what the portal will run, the way it will run it: scheduler commands as a real
user through the hub's own runner (sudo, SSH; the policy's command_path, environment and
command_timeout) and the site's scheduler adapter, the job's interpreter as that user, a bind with
the directory's service account, and (with `--submit-test-job`) a tiny job on each partition that
checks its own environment and whether it can reach the hub. The report has one ✓/✗ line per check
and one sentence per problem; the test jobs live in `testjobs.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from gateway.admin.directory import service_connection, uses_ldaps
from gateway.admin.report import Report, last_line, resolve, unix_groups_of
from gateway.admin.testjobs import ProbeJobs, TestJobSetup
from gateway.hub.scheduling import scheduler_settings
from gateway.policy.live import compare_limits, compare_queue_limits
from gateway.policy.load import PolicyFileError, load_policy
from gateway.policy.model import Directory, SitePolicy
from gateway.policy.rules import rules_for
from gateway.policy.schema import describe_schema
from schedulers.durations import format_words
from schedulers.errors import SchedulerError
from schedulers.registry import ADAPTERS, make_runner, make_scheduler
from schedulers.runners import CommandResult, Runner
from schedulers.slurm_partitions import NodeInfo

__all__ = ["ConfigChecker", "Report", "main"]

_NAMES = {"slurm": "Slurm", "pbs": "PBS"}


# -- the checks ---------------------------------------------------------------------------------


class AsUser:
    """A runner whose commands run as one user unless told otherwise: check-config asks, as the
    test user, what the hub asks as itself (queue limits, the job listing)."""

    def __init__(self, runner: Runner, user: str | None):
        self.runner, self.user = runner, user
        self.timeout = runner.timeout

    async def run(self, argv: Sequence[str], *, user: str | None = None, input: str | None = None,
                  timeout: float | None = None) -> CommandResult:
        return await self.runner.run(argv, user=user or self.user, input=input, timeout=timeout)

    async def close(self) -> None:
        await self.runner.close()


class ConfigChecker:
    """Runs every check for one policy and fills a Report.

    Commands go through the runner the hub would use (`make_runner` of the policy's cluster
    section: its command_path, environment, command_timeout and transport), as the test user.
    """

    def __init__(self, policy: SitePolicy, source: str, report: Report, *,
                 runner: Runner | None = None, test_user: str | None = None,
                 submit_test_job: bool = False, poll_interval: float = 1.0):
        self.policy = policy
        self.source = source
        self.report = report
        self.settings = scheduler_settings(policy.cluster)
        self.user = test_user or policy.check.test_user
        # The local transport runs everything as the hub's own user: there is no one to be.
        self.runner = AsUser(runner or make_runner(self.settings),
                             None if self.settings.transport == "local" else self.user)
        self.submit_test_job = submit_test_job
        self.poll_interval = poll_interval
        self.scheduler: Any = None
        self.live: Mapping[str, Any] | None = None
        """The scheduler's partitions (queues) by name, once it answered."""
        self.nodes: dict[str, NodeInfo] | None = None
        self.home = "/"
        """The test user's home (set by check_test_user): test jobs write their output there."""

    def job_argv(self, argv: Sequence[str]) -> list[str]:
        """argv in a clean, job-like environment (the job's PATH, the user's HOME)."""
        env = {"PATH": self.policy.job.path, "HOME": self.home}
        return ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]

    async def run(self, argv: Sequence[str]) -> CommandResult:
        """argv as the test user; a runner that cannot run it at all answers like a failed command
        (rc 127 and its sentence), so each check words its own failure."""
        try:
            return await self.runner.run(argv)
        except SchedulerError as err:
            return CommandResult(127, "", err.message)

    async def run_all(self) -> Report:
        try:
            self.check_policy()
            self.check_hosts()
            if self.policy.connection.mode == "login-node":
                await self.check_login_node()
            if self.policy.directory is not None:
                self.check_directory(self.policy.directory)
            if not await self.check_test_user():
                return self.report
            await self.check_scheduler()
            self.check_nodes()
            await self.check_job_environment()
            if self.submit_test_job:
                await self.check_test_jobs()
            return self.report
        finally:
            await self.runner.close()
            if self.scheduler is not None and hasattr(self.scheduler, "close"):
                await self.scheduler.close()

    # policy -----------------------------------------------------------------------------------

    def check_policy(self) -> None:
        p = self.policy
        self.report.section("Policy")
        depots = f", {len(p.depots)} depot{'s' if len(p.depots) != 1 else ''}" if p.depots else ""
        self.report.ok(f"{self.source} is valid: cluster {p.cluster.name} ({p.cluster.scheduler} via "
                       f"{p.cluster.transport}), partitions {', '.join(p.partitions)}, "
                       f"{len(p.groups)} group rules{depots}, connection mode {p.connection.mode}.")
        if p.cluster.transport == "rest":
            self.report.skip("Transport rest: jobs go through slurmrestd; the other commands run "
                             "through sudo on this host, as the hub's do.")

    # host names ----------------------------------------------------------------------------------

    def _named_hosts(self) -> list[tuple[str, str]]:
        p = self.policy
        hosts: list[tuple[str, str]] = []
        if p.connection.hub_api_url:
            hosts.append(("connection.hub_api_url", urlsplit(p.connection.hub_api_url).hostname or ""))
        if p.connection.ssh_host:
            hosts.append(("connection.ssh_host", p.connection.ssh_host))
        if p.directory is not None:
            hosts.append(("directory.uri", urlsplit(p.directory.uri).hostname or ""))
        if p.cluster.ssh is not None:
            hosts.append(("cluster.ssh.host", p.cluster.ssh.host))
        if p.cluster.rest is not None:
            hosts.append(("cluster.rest.url", urlsplit(p.cluster.rest.url).hostname or ""))
        return hosts

    async def check_login_node(self) -> None:
        """Log in to the login node as the hub's forwards will, with the policy's key and
        known_hosts, and open one forward through it."""
        from gateway.tunnel.hubside import TunnelConfigError
        from gateway.tunnel.loginnode import ForwardError, probe, settings_from

        self.report.section("Login node")
        c = self.policy.connection  # the policy's checks make login-node mode name all four
        where = f"{c.login_node_user}@{c.ssh_host}:{c.ssh_port}"
        try:  # the settings the hub takes, from the same function
            unanswered = await probe(settings_from(c))
        except (TunnelConfigError, ForwardError) as err:
            self.report.fail(f"The hub cannot open forwards through {where}: {err}")
            return
        logged_in = (f"The hub logs in to {where} with {c.login_node_key} (host key pinned by "
                     f"{c.known_hosts})")
        if unanswered:
            self.report.warn(f"{logged_in}, but {unanswered}.")
        else:
            self.report.ok(f"{logged_in} and a connection through a forward there reaches the "
                           "login node's SSH server.")

    def check_hosts(self) -> None:
        self.report.section("Host names")
        for where, host in self._named_hosts():
            address = resolve(host)
            if address is None:
                self.report.fail(f"The host {host!r} named in {where} does not resolve on this "
                                 "machine: fix the name or add it to DNS or /etc/hosts.")
            else:
                self.report.ok(f"{where}: {host} resolves to {address}.")

    # directory -----------------------------------------------------------------------------------

    def check_directory(self, d: Directory) -> None:
        from ldap3.core.exceptions import LDAPException
        from ldap3.utils.conv import escape_filter_chars

        self.report.section("Directory")
        try:
            password = Path(d.bind_password_file).read_text().rstrip("\n")
        except OSError as err:
            self.report.fail(f"directory.bind_password_file {d.bind_password_file} cannot be read "
                             f"({err.strerror}): check-config cannot log in to the directory.")
            return
        use_ssl = uses_ldaps(d)
        conn = service_connection(d, password)
        how = "LDAPS" if use_ssl else ("StartTLS" if d.start_tls else "no TLS")
        verified = ", certificate verified" if d.verify_tls and (use_ssl or d.start_tls) else ""
        try:
            conn.open()
            if d.start_tls and not use_ssl and not conn.start_tls():
                self.report.fail(f"StartTLS with {d.uri} failed ({conn.result.get('description')}).")
                return
            if not conn.bind():
                reason = conn.result.get("description") or "refused"
                hint = (" The password in directory.bind_password_file is wrong, or the DN is."
                        if reason == "invalidCredentials" else "")
                self.report.fail(f"The directory at {d.uri} refused the service account "
                                 f"{d.bind_dn} ({reason}).{hint}")
                return
            self.report.ok(f"Bound to {d.uri} as {d.bind_dn} ({how}{verified}).")
            if d.group_base_dn:
                missing = []
                for group in self.policy.groups:
                    conn.search(d.group_base_dn, f"(cn={escape_filter_chars(group)})",
                                attributes=["cn"], size_limit=1)
                    if not conn.entries:
                        missing.append(group)
                for group in missing:
                    self.report.fail(f"The directory has no group {group!r} under {d.group_base_dn}: "
                                     f"the rule groups.{group} matches nobody (a typo?).")
                if not missing:
                    self.report.ok(f"Groups {', '.join(self.policy.groups)} exist under "
                                   f"{d.group_base_dn}.")
        except (LDAPException, OSError) as err:
            self.report.fail(f"Cannot talk to the directory at {d.uri} ({how}): {err}. Check the "
                             "URI, the port, and (with TLS) ca_cert and the certificate's host name.")
        finally:
            try:
                conn.unbind()
            except LDAPException:
                pass

    # the test user ---------------------------------------------------------------------------------

    async def check_test_user(self) -> bool:
        self.report.section("Test user")
        if not self.user:
            self.report.fail("No test user: set check.test_user in the policy or pass --user; "
                             "scheduler and job checks run as a real user.")
            return False
        try:
            entry = pwd.getpwnam(self.user)
        except KeyError:
            self.report.fail(f"The test user {self.user!r} has no account on this machine.")
            return False
        self.home = entry.pw_dir
        res = await self.run(["id", "-un"])
        rules = rules_for(self.policy, [g.gr_name for g in unix_groups_of(self.user)])
        offered = ", ".join(rules.partitions) or "no partition"
        if self.runner.user is None:
            self.report.ok(f"Transport local: commands run as this host's user "
                           f"{res.stdout.strip() or '?'}; the policy offers {self.user} {offered}.")
            return res.returncode == 0
        how = {"ssh": f"over SSH on {self.settings.ssh_host}"}.get(self.settings.transport,
                                                                    "through `sudo -n`")
        if res.returncode != 0 or res.stdout.strip() != self.user:
            advice = ("Check cluster.ssh (host, key_template or service_user) and the login node."
                      if self.settings.transport == "ssh" else
                      "Run check-config as root (or give the hub's user the sudo rule the portal "
                      "uses).")
            self.report.fail(f"Cannot run commands as {self.user} {how}: {last_line(res.stderr)}. "
                             f"{advice}")
            return False
        self.report.ok(f"Commands run as {self.user} {how}; the policy offers them {offered}.")
        return True

    # scheduler -------------------------------------------------------------------------------------

    async def check_scheduler(self) -> None:
        self.report.section("Scheduler")
        try:
            self.scheduler = make_scheduler(self.settings, self.runner)
        except (ValueError, OSError) as err:  # e.g. the REST transport's JWT key is unreadable
            self.report.fail(f"The hub could not set up its {self.settings.kind} adapter: {err}.")
            return
        if self.policy.cluster.scheduler == "slurm" and not await self._check_slurm_conf():
            return
        word = ADAPTERS[self.settings.kind].queue_word
        try:
            self.live = await self.scheduler.queue_limits()
        except NotImplementedError as err:
            self.report.skip(getattr(err, "message", str(err)))
            return
        except SchedulerError as err:
            self.report.fail(f"Asked as {self.user}: {err.message}")
            return
        name = _NAMES.get(self.settings.kind, self.settings.kind)
        self.report.ok(f"{name} answers {self.user}: {word}s {', '.join(self.live) or 'none'}.")
        if self.policy.cluster.scheduler == "pbs":
            problems = compare_queue_limits(self.policy, self.live)
            described = _describe_max_times({n: q.max_walltime for n, q in self.live.items()},
                                            "resources_max.walltime", self.policy)
        else:
            await self._read_nodes()
            problems = compare_limits(self.policy, self.live, self.nodes)
            described = _describe_max_times({n: p.max_time for n, p in self.live.items()},
                                            "MaxTime", self.policy)
        for problem in problems:
            (self.report.fail if problem.severity == "error" else self.report.warn)(problem.message)
        if not [p for p in problems if p.severity == "error"]:
            self.report.ok(f"The policy's limits fit {name}'s {word}s ({described}).")

    async def _check_slurm_conf(self) -> bool:
        """False when Slurm commands cannot work at all (a missing file makes each retry a minute)."""
        conf = self.policy.cluster.environment.get("SLURM_CONF")
        if conf is None:
            if not await asyncio.to_thread(os.path.exists, "/etc/slurm/slurm.conf"):
                self.report.fail("cluster.environment sets no SLURM_CONF and /etc/slurm/slurm.conf "
                                 "does not exist: Slurm commands run through sudo (and jobs) cannot "
                                 "find their configuration. Add SLURM_CONF to cluster.environment.")
            else:
                self.report.warn("cluster.environment sets no SLURM_CONF: commands use "
                                 "/etc/slurm/slurm.conf.")
            return True
        if (await self.run(["test", "-r", conf])).returncode != 0:
            self.report.fail(f"{self.user} cannot read SLURM_CONF={conf} (missing, or a parent "
                             "directory is closed to users): no Slurm command can work.")
            return False
        self.report.ok(f"{self.user} can read SLURM_CONF={conf}.")
        return True

    async def _read_nodes(self) -> None:
        node_limits = getattr(self.scheduler, "node_limits", None)  # the command-line adapter's
        if node_limits is None:
            return
        try:
            self.nodes = await node_limits()
        except SchedulerError as err:
            self.report.warn(f"Asked as {self.user}: {err.message[:-1]}; node sizes are not "
                             "compared.")

    # nodes -----------------------------------------------------------------------------------------

    def check_nodes(self) -> None:
        self.report.section("Nodes")
        direct = self.policy.connection.mode == "direct"
        for name, partition in self.policy.partitions.items():
            pinned = partition.node
            if pinned and (self.nodes is None or pinned not in self.nodes):
                address = resolve(pinned)
                if address is None:
                    self.report.fail(f"partitions.{name}.node {pinned!r} does not resolve on this "
                                     "machine and the scheduler does not list it: no job could "
                                     "start there.")
        if self.nodes is None or self.live is None:
            self.report.skip("The scheduler's node list is not available; node addresses not checked.")
            return
        wanted = sorted({n for p in self.policy.partitions if p in self.live
                         for n in self.live[p].nodes})
        for node_name in wanted:
            node = self.nodes.get(node_name)
            if node is None:
                continue
            address = resolve(node.address)
            name_note = ""
            if node.address != node.name and resolve(node.name) is None:
                name_note = (f" (the name {node.name} does not resolve here; the gateway uses "
                             "Slurm's NodeAddr)")
            if address is None:
                text = (f"Node {node.name}: its address {node.address!r} (NodeAddr) does not resolve "
                        "on this machine")
                if direct:
                    self.report.fail(text + ": in direct mode the hub cannot reach servers there.")
                else:
                    self.report.warn(text + f" (not needed in {self.policy.connection.mode} mode).")
            else:
                self.report.ok(f"Node {node.name} resolves to {address}{name_note}.")

    # job environment -------------------------------------------------------------------------------

    async def check_job_environment(self) -> None:
        self.report.section("Job environment")
        job = self.policy.job
        if (await self.run(self.job_argv(["test", "-x", job.python]))).returncode != 0:
            self.report.fail(f"{self.user} cannot execute the job's interpreter {job.python} (missing, "
                             "or it or a parent directory is not readable and executable by "
                             "users): jobs cannot start the notebook server.")
        else:
            code = "import sys, gateway; print(sys.version.split()[0], gateway.__file__)"
            res = await self.run(self.job_argv([job.python, "-c", code]))
            if res.returncode != 0:
                self.report.fail(f"{self.user} runs {job.python} but it cannot import the gateway: "
                                 f"{last_line(res.stderr)}. Install hpcgate into that environment, "
                                 "readable by users.")
            else:
                version, _, location = res.stdout.strip().partition(" ")
                self.report.ok(f"{self.user} runs {job.python} (Python {version}) and imports the "
                               f"gateway from {location}.")
        missing = [d for d in job.path.split(":") if not await asyncio.to_thread(os.path.isdir, d)]
        if missing:
            self.report.warn(f"job.path lists directories missing on this host: {', '.join(missing)}.")
        command = "srun" if self.policy.cluster.scheduler == "slurm" else "qstat"
        res = await self.run(self.job_argv(["sh", "-c", 'command -v "$0"', command]))
        if res.returncode != 0:
            self.report.warn(f"The job's PATH ({job.path}) has no `{command}` on this host.")
        else:
            self.report.ok(f"The job's PATH finds {res.stdout.strip()} as {self.user}.")
        if not self.submit_test_job:
            self.report.skip("Jobs on the nodes were not tried: add --submit-test-job to check PATH, "
                             "SLURM_CONF and the way back to the hub from inside real jobs.")

    # test jobs ---------------------------------------------------------------------------------------

    async def check_test_jobs(self) -> None:
        if self.live is None or self.user is None:
            self.report.section("Test jobs")
            self.report.skip("The scheduler did not answer above; no test jobs submitted.")
            return
        rules = rules_for(self.policy, [g.gr_name for g in unix_groups_of(self.user)])
        nodes = {name: tuple(getattr(limits, "nodes", ())) for name, limits in self.live.items()}
        setup = TestJobSetup(self.policy, self.scheduler, self.runner, self.user, self.home, nodes,
                             account=rules.default_account, poll_interval=self.poll_interval)
        await ProbeJobs(setup, self.report).check()


def _describe_max_times(max_times: Mapping[str, timedelta | None], label: str,
                        policy: SitePolicy) -> str:
    """"name LABEL 12:00:00, ..." for the policy's partitions the scheduler reported."""
    parts = []
    for name in policy.partitions:
        if name in max_times:
            mt = max_times[name]
            parts.append(f"{name} {label} {format_words(mt) if mt else 'unlimited'}")
    return ", ".join(parts)


# -- the command ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcgate check-config",
        description="Check a site policy file against the live cluster, directory and nodes.")
    parser.add_argument("site", nargs="?", help="the site policy file (YAML)")
    parser.add_argument("--user", help="run scheduler commands and test jobs as this user "
                                       "(default: check.test_user from the policy)")
    parser.add_argument("--submit-test-job", action="store_true",
                        help="submit a tiny job per partition and node to check the job's "
                             "environment and the way back to the hub")
    parser.add_argument("--schema", action="store_true",
                        help="print every field of the policy file with its help text, and exit")
    return parser


def main(argv: Sequence[str] | None = None, *, runner: Runner | None = None,
         out: TextIO | None = None) -> int:
    """Exit code 0 when every check passes, 1 when any fails (or the file is invalid)."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    if args.schema:
        print(describe_schema(SitePolicy), file=out)
        return 0
    if not args.site:
        print("hpcgate check-config: name the site policy file (or use --schema).", file=out)
        return 1
    report = Report(out=out)
    try:
        policy = load_policy(args.site)
    except PolicyFileError as err:
        report.section("Policy")
        for problem in err.problems:
            report.fail(str(problem))
        print(report.summary(), file=out)
        return 1
    asyncio.run(ConfigChecker(policy, args.site, report, runner=runner, test_user=args.user,
                              submit_test_job=args.submit_test_job).run_all())
    print(report.summary(), file=out)
    return 1 if report.failures else 0

