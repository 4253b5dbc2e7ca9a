"""The site policy, typed: what a cluster admin promises the portal may ask of the scheduler.

Frozen dataclasses, built by `load.py` from YAML. Each field carries the help text admins read
(`hpcgate check-config --schema` prints them all). `SitePolicy.problems()` finds what a single
field cannot: a default above its maximum, a group naming a partition that does not exist.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

from gateway.policy.durations import format_memory
from gateway.policy.schema import (
    AbsPath,
    Boolean,
    Choice,
    Duration,
    EnvName,
    GroupName,
    Host,
    Integer,
    ListOf,
    MapOf,
    Memory,
    Name,
    SearchPath,
    Seconds,
    Section,
    Text,
    Url,
    setting,
)
from schedulers.durations import format_words
from schedulers.registry import ADAPTERS

Path = tuple[str | int, ...]
"""Where a value sits in the file: ('partitions', 'debug', 'max_walltime')."""

SCHEDULERS = tuple(ADAPTERS)
TRANSPORTS = ("local", "sudo", "ssh", "rest")
CONNECTION_MODES = ("direct", "reverse", "login-node")


# -- limits -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one job may ask of one partition, and what the form offers when the user says nothing."""

    max_walltime: timedelta = setting(
        "Longest walltime a user may ask for (e.g. 30m, 2:00:00, 1-12:00, 2d).", Duration())
    default_walltime: timedelta = setting(
        "Walltime the form suggests; at most max_walltime.", Duration(), timedelta(hours=1))
    max_cpus: int = setting("Most cores one job may ask for (on one node).", Integer(1, 100_000))
    default_cpus: int = setting("Cores the form suggests.", Integer(1, 100_000), 1)
    max_memory: int = setting(
        "Most memory one job may ask for (e.g. 8G, 512M; a bare number is MB). Held in MB.",
        Memory())
    default_memory: int = setting("Memory the form suggests. Held in MB.", Memory(), 1024)
    max_gpus: int = setting("Most GPUs one job may ask for; 0 hides the GPU field.",
                            Integer(0, 1024), 0)
    default_gpus: int = setting("GPUs the form suggests.", Integer(0, 1024), 0)
    max_nodes: int = setting(
        "Most nodes one job may span. Notebook servers use one node; keep 1 unless your site "
        "runs multi-node kernels.", Integer(1, 100_000), 1)

    def override(self, changes: LimitOverrides | None) -> Limits:
        """These limits with a group's overrides applied (fields the group leaves unset stay)."""
        if changes is None:
            return Limits(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Limits)})
        return Limits(**{f.name: (getattr(changes, f.name) if getattr(changes, f.name) is not None
                                  else getattr(self, f.name))
                         for f in dataclasses.fields(Limits)})

    def problems(self) -> Iterator[tuple[str, str]]:
        """(field, sentence) for each default that exceeds its maximum."""
        pairs = (
            ("default_walltime", self.default_walltime, self.max_walltime, format_words),
            ("default_cpus", self.default_cpus, self.max_cpus, str),
            ("default_memory", self.default_memory, self.max_memory, format_memory),
            ("default_gpus", self.default_gpus, self.max_gpus, str),
        )
        for name, default, maximum, show in pairs:
            if default > maximum:
                yield name, (f"the default {show(default)} is above the maximum {show(maximum)} "
                             f"(max_{name.removeprefix('default_')})")


@dataclass(frozen=True, kw_only=True)
class Partition(Limits):
    """A Slurm partition or PBS queue the portal may submit to, with its limits for everyone."""

    description: str = setting("What the partition is for, shown in the form.", Text(), "")
    node: str | None = setting(
        "Pin the portal's jobs on this partition to one node (e.g. a dedicated interactive node). "
        "Leave unset to let the scheduler choose.", Name(), None)

    @property
    def limits(self) -> Limits:
        return Limits.override(self, None)


@dataclass(frozen=True, kw_only=True)
class LimitOverrides:
    """A group's own limits on one partition: tighter or looser than the partition's."""

    max_walltime: timedelta | None = setting("Longest walltime for this group.", Duration(), None)
    default_walltime: timedelta | None = setting("Suggested walltime for this group.", Duration(), None)
    max_cpus: int | None = setting("Most cores for this group.", Integer(1, 100_000), None)
    default_cpus: int | None = setting("Suggested cores for this group.", Integer(1, 100_000), None)
    max_memory: int | None = setting("Most memory for this group.", Memory(), None)
    default_memory: int | None = setting("Suggested memory for this group.", Memory(), None)
    max_gpus: int | None = setting("Most GPUs for this group.", Integer(0, 1024), None)
    default_gpus: int | None = setting("Suggested GPUs for this group.", Integer(0, 1024), None)
    max_nodes: int | None = setting("Most nodes for this group.", Integer(1, 100_000), None)


# -- who may do what ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Account:
    """A scheduler account (Slurm --account, PBS -A) that jobs are charged to."""

    description: str = setting("What the account is for, shown in the form.", Text(), "")


@dataclass(frozen=True, kw_only=True)
class GroupRule:
    """What members of one directory group may do. A user in several groups gets the union."""

    description: str = setting("A note for admins (not shown to users).", Text(), "")
    partitions: tuple[str, ...] = setting(
        "Partitions this group may use. A user sees the partitions of all their groups.",
        ListOf(Name()), ())
    limits: Mapping[str, LimitOverrides] = setting(
        "Per-partition limits for this group, replacing the partition's own field by field. "
        "Where several of a user's groups open a partition, the user gets the largest maximum.",
        MapOf(Name(), Section(LimitOverrides)), factory=dict)
    accounts: tuple[str, ...] = setting("Accounts this group may charge.", ListOf(Name()), ())
    default_account: str | None = setting(
        "Account preselected for this group's members; one of `accounts`. When several of a "
        "user's groups set one, the group listed first in this file wins.", Name(), None)
    max_servers: int = setting(
        "How many notebook servers one member may run at the same time (largest over a user's "
        "groups).", Integer(0, 1000), 1)


# -- the cluster and the job --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SshTransport:
    """A login node the hub reaches over SSH to run scheduler commands (transport: ssh)."""

    host: str = setting("The login node's host name.", Host())
    port: int = setting("Its SSH port.", Integer(1, 65535), 22)
    known_hosts: str | None = setting(
        "A known_hosts file holding the login node's host key (never trust on first use).",
        AbsPath(), None)
    key_template: str | None = setting(
        "The private key the hub logs in to the login node with as each user, `{user}` standing "
        "for the name, e.g. /etc/hpcgate/keys/{user}_ed25519.", Text(), None)
    service_user: str | None = setting(
        "The account the hub's status queries log in as (required). Without key_template, each "
        "user's commands also log in as it and run through sudo on the login node.", Name(), None)


@dataclass(frozen=True, kw_only=True)
class RestTransport:
    """slurmrestd (transport: rest): submit and query over HTTP instead of forking commands."""

    url: str = setting("slurmrestd's base URL, e.g. http://slurm-ctl:6820.", Url("http", "https"))
    api_version: str = setting(
        "The OpenAPI plugin version to speak: v0.0.38 (Slurm 22.05), v0.0.40 (23.11), v0.0.41 "
        "(24.05), v0.0.42 (24.11-25.11).", Name(), "v0.0.38")
    jwt_key_file: str | None = setting(
        "The JWT signing key, to mint per-user tokens (root-only file).", AbsPath(), None)


@dataclass(frozen=True, kw_only=True)
class Cluster:
    """The batch system and how the hub talks to it."""

    name: str = setting("A short name for the cluster, shown in messages.", Name())
    scheduler: str = setting("The batch system.", Choice(*SCHEDULERS))
    transport: str = setting(
        "How the hub runs scheduler commands: local (as the hub's user), sudo (as each user on "
        "the hub host), ssh (on a login node), rest (slurmrestd).", Choice(*TRANSPORTS), "sudo")
    environment: Mapping[str, str] = setting(
        "Variables every scheduler command needs, passed explicitly (sudo and ssh drop the "
        "caller's environment): SLURM_CONF for Slurm, PBS_CONF_FILE for PBS.",
        MapOf(EnvName(), Text()), factory=dict)
    command_path: str = setting(
        "PATH for scheduler commands on the hub side.", SearchPath(),
        "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin")
    command_timeout: timedelta = setting(
        "How long one scheduler command may take before it counts as a failure.", Duration(),
        timedelta(seconds=30))
    ssh: SshTransport | None = setting("Settings for transport: ssh.", Section(SshTransport), None)
    rest: RestTransport | None = setting("Settings for transport: rest.", Section(RestTransport), None)
    jobcomp_file: str | None = setting(
        "Slurm's jobcomp/filetxt log, when the hub can read it: how jobs that have left the "
        "controller ended (time limit, out of memory...).", AbsPath(), None)
    use_sacct: bool = setting(
        "Ask sacct how jobs ended (needs slurmdbd accounting).", Boolean(), False)
    poll_starting: float = setting(
        "Seconds between the hub's scheduler queries while any server is starting.",
        Seconds(0.1, 60), 0.5)
    poll_steady: float = setting(
        "Seconds between the hub's scheduler queries while every server runs steadily: a job "
        "that ends (walltime, scancel, node failure) is noticed within about this long. One "
        "query names only the hub's own jobs, so its cost does not grow with the queue.",
        Seconds(1, 600), 4.0)


@dataclass(frozen=True, kw_only=True)
class JobEnvironment:
    """What the job script sets up before it starts the notebook server. Written by the site only."""

    python: str = setting(
        "The interpreter that runs the notebook server in the job: it must be readable and "
        "executable by every user and able to `import gateway`.", AbsPath())
    path: str = setting("PATH inside the job.", SearchPath(), "/usr/local/bin:/usr/bin:/bin")
    prologue: str = setting(
        "Shell lines run before the server starts, e.g. `module load python/3.11` or "
        "`source /opt/envs/jupyter/bin/activate`. Site text: users never add to it.",
        Text(multiline=True, max_length=65536), "")
    environment: Mapping[str, str] = setting(
        "Extra variables exported in the job (never secrets: schedulers show job environments to "
        "other users).", MapOf(EnvName(), Text()), factory=dict)
    extra_directives: tuple[str, ...] = setting(
        "Raw scheduler header lines added to every job, e.g. '#SBATCH --constraint=ib'. Each must "
        "start with '#SBATCH ' (Slurm) or '#PBS ' (PBS).", ListOf(Text()), ())
    workdir: str = setting(
        "The job's working directory and the notebook server's root, `{user}` and `{home}` "
        "standing for the user's name and home (e.g. /scratch/{user}). The server keeps its "
        "launch file and job log in .hpcgate/servers/NAME below it.", Text(), "{home}")
    report_timeout: float = setting(
        "Seconds the job's launcher keeps trying to tell the hub where its server listens (a hub "
        "restart included).", Seconds(10, 86400), 600.0)
    end_signal: float = setting(
        "Seconds before the walltime the scheduler signals the job (Slurm `--signal=B:USR2@N`), "
        "so the server stops its kernels and ends as \"reached its time limit\" instead of being "
        "killed. 0 turns it off (PBS has no such signal: its SIGTERM at the limit does the same, "
        "with less time).", Seconds(0, 3600), 90.0)
    walltime_warnings: tuple[timedelta, ...] = setting(
        "Time left at which the portal warns the user (the session's card, a banner on every hub "
        "page, a notification in JupyterLab), e.g. [15m, 5m].", ListOf(Duration()),
        (timedelta(minutes=15), timedelta(minutes=5)))


@dataclass(frozen=True, kw_only=True)
class Connection:
    """How the hub's proxy reaches the notebook server inside a job."""

    mode: str = setting(
        "direct: the hub connects to the node's address (nodes reachable from the hub). "
        "reverse: the job opens an SSH tunnel back to the hub host (hub outside the cluster). "
        "login-node: the hub tunnels through a login node to the node.",
        Choice(*CONNECTION_MODES), "direct")
    hub_api_url: str | None = setting(
        "The URL jobs use to call the hub's API. In direct mode every node must reach it; in "
        "reverse mode jobs reach it through their tunnel (a loopback URL on the hub host is fine).",
        Url("http", "https"), None)
    ssh_host: str | None = setting(
        "reverse: the hub host's SSH server that jobs tunnel to; login-node: the login node the "
        "hub tunnels through.", Host(), None)
    ssh_port: int = setting("Port of that SSH server.", Integer(1, 65535), 22)
    known_hosts: str | None = setting(
        "known_hosts file with that SSH server's host key.", AbsPath(), None)
    login_node_user: str | None = setting(
        "login-node: the account on the login node that the hub's forwards log in as.", Name(),
        None)
    login_node_key: str | None = setting(
        "login-node: the hub's private key for that account (a file only the hub's user can "
        "read; ssh gets its path, never its contents).", AbsPath(), None)
    tunnel_user: str = setting(
        "reverse: the account on the hub host that jobs' tunnels log in as.", Name(),
        "hpcgate-tunnel")
    authorized_keys: str | None = setting(
        "reverse: that account's authorized_keys file, which the hub edits (one restricted line "
        "per running job, removed when it stops).", AbsPath(), None)
    first_port: int = setting(
        "reverse and login-node: the first loopback port on the hub host given to tunnels.",
        Integer(1024, 65535), 40000)
    last_port: int = setting("reverse and login-node: the last such port.",
                             Integer(1024, 65535), 49999)
    ciphers: str | None = setting(
        "reverse and login-node: SSH ciphers offered, fastest first (unset: aes128-gcm, the "
        "fastest measured, then chacha20-poly1305 and aes256-gcm).", Text(), None)
    down_timeout: float = setting(
        "reverse and login-node: seconds a server's tunnel may stay down (its ssh keeps "
        "reconnecting) before the server counts as ended and its job is cancelled; 0: never.",
        Seconds(0, 86400), 120.0)


@dataclass(frozen=True, kw_only=True)
class Directory:
    """The directory service (LDAP), used here by `hpcgate check-config` to test the service account."""

    uri: str = setting("ldap://host:port (with start_tls) or ldaps://host:port.", Url("ldap", "ldaps"))
    start_tls: bool = setting("Upgrade an ldap:// connection with StartTLS.", Boolean(), True)
    ca_cert: str | None = setting("CA certificate that signed the directory's certificate.",
                                  AbsPath(), None)
    verify_tls: bool = setting(
        "Verify the directory's certificate and host name. Turn off only on a test bench.",
        Boolean(), True)
    bind_dn: str = setting("The service account's DN, for the search step of search-then-bind.",
                           Text())
    bind_password_file: str = setting(
        "A root-only file holding the service account's password (never the password inline).",
        AbsPath())
    group_base_dn: str | None = setting(
        "Where groups live; when set, check-config confirms each group of this policy exists.",
        Text(), None)
    timeout: timedelta = setting("Connect and answer timeout.", Duration(), timedelta(seconds=5))


@dataclass(frozen=True, kw_only=True)
class Depot:
    """A shared project directory on the cluster's filesystem (provisioned by `hpcgate depot`)."""

    path: str = setting(
        "Where the depot lives on the shared filesystem, the same path on every node (written "
        "plainly: no '..', no trailing '/').", AbsPath())
    group: str = setting(
        "The directory group that owns it (its gidNumber becomes the directory's group).", Name())
    access: str = setting(
        "What the owning group may do: rw (read and write, mode 2770) or ro (read only, 2750; "
        "only root writes).", Choice("rw", "ro"), "rw")
    read_only_groups: tuple[str, ...] = setting(
        "Other directory groups that may read it (a named-group ACL entry each).",
        ListOf(Name()), ())
    description: str = setting("What the depot holds, shown to users.", Text(), "")


@dataclass(frozen=True, kw_only=True)
class Activity:
    """The activity history: every kernel execution and server event, recorded in each server's
    job and kept in the hub's store (see the README's Activity section)."""

    record: bool = setting(
        "Record activity in servers started from now on (false: the launcher does not load the "
        "recorder; what the hub already keeps stays until the retention removes it).",
        Boolean(), True)
    code: str = setting(
        "What a record keeps of executed code: none, hash (its SHA-256 and line count) or full "
        "(the text). Outputs are never kept.", Choice("none", "hash", "full"), "hash")
    retention: timedelta = setting(
        "How long the hub keeps activity records (e.g. 180d); older ones are deleted.",
        Duration(), timedelta(days=180))
    viewers: Mapping[str, tuple[str, ...]] = setting(
        "Who sees a group's activity besides each member's own: directory group -> the directory "
        "groups (leads, instructors) whose members see every member's timeline, the group's "
        "aggregates, and download them (e.g. soundscape-lab: [soundscape-leads]).",
        MapOf(GroupName(), ListOf(GroupName())), factory=dict)


@dataclass(frozen=True, kw_only=True)
class CheckSettings:
    """Settings for `hpcgate check-config`."""

    test_user: str | None = setting(
        "A real user to run scheduler commands and test jobs as (`--user` overrides it).",
        Name(), None)
    job_timeout: timedelta = setting("How long a test job may take from submission to its end.",
                                     Duration(), timedelta(minutes=2))
    nodes_per_partition: int = setting(
        "With --submit-test-job: how many nodes of each partition get a test job.",
        Integer(1, 64), 2)


@dataclass(frozen=True, kw_only=True)
class SitePolicy:
    """One site's whole policy."""

    cluster: Cluster = setting("The batch system and how to reach it.", Section(Cluster))
    job: JobEnvironment = setting("How jobs start the notebook server.", Section(JobEnvironment))
    partitions: Mapping[str, Partition] = setting(
        "Partitions (Slurm) or queues (PBS) the portal may use, by their scheduler name.",
        MapOf(Name(), Section(Partition)))
    default_partition: str | None = setting(
        "Partition the form preselects (when the user may use it).", Name(), None)
    accounts: Mapping[str, Account] = setting(
        "Scheduler accounts, by name. Leave empty when the site does not charge accounts.",
        MapOf(Name(), Section(Account)), factory=dict)
    groups: Mapping[str, GroupRule] = setting(
        "Rules by directory group. Users in none of these groups cannot start servers.",
        MapOf(GroupName(), Section(GroupRule)))
    connection: Connection = setting("How the proxy reaches servers in jobs.", Section(Connection),
                                     factory=Connection)
    directory: Directory | None = setting("The LDAP directory (for check-config).",
                                          Section(Directory), None)
    depots: Mapping[str, Depot] = setting("Shared project directories, by name.",
                                          MapOf(Name(), Section(Depot)), factory=dict)
    check: CheckSettings = setting("Settings for hpcgate check-config.", Section(CheckSettings),
                                   factory=CheckSettings)
    activity: Activity = setting("The activity history: what is kept of code, and for how long.",
                                 Section(Activity), factory=Activity)

    def problems(self) -> list[tuple[Path, str]]:
        """Rules that span fields: (where, sentence) for each. Empty when the policy holds together."""
        found: list[tuple[Path, str]] = []

        def add(where: Path, sentence: str) -> None:
            found.append((where, sentence))
        if not self.partitions:
            add(("partitions",), "the policy names no partition; the portal would offer nothing")
        if not self.groups:
            add(("groups",), "the policy has no group rules; nobody could start a server")
        for name, part in self.partitions.items():
            for field, sentence in part.problems():
                add(("partitions", name, field), sentence)
        if self.default_partition is not None and self.default_partition not in self.partitions:
            add(("default_partition",), _unknown("partition", self.default_partition, self.partitions))
        for group, rule in self.groups.items():
            for i, part_name in enumerate(rule.partitions):
                if part_name not in self.partitions:
                    add(("groups", group, "partitions", i),
                        _unknown("partition", part_name, self.partitions))
            for part_name, changes in rule.limits.items():
                where: Path = ("groups", group, "limits", part_name)
                if part_name not in self.partitions:
                    add(where, _unknown("partition", part_name, self.partitions))
                    continue
                if part_name not in rule.partitions:
                    add(where, f"limits for partition {part_name!r}, which this group may not use "
                               "(add it to the group's partitions)")
                for field, sentence in self.partitions[part_name].limits.override(changes).problems():
                    # Only what this override changed; the partition's own slips are reported there.
                    touched = [f for f in ("max_" + field.removeprefix("default_"), field)
                               if getattr(changes, f) is not None]
                    if touched:
                        add((*where, touched[0]), sentence)
            for i, account in enumerate(rule.accounts):
                if account not in self.accounts:
                    add(("groups", group, "accounts", i), _unknown("account", account, self.accounts))
            if rule.default_account is not None and rule.default_account not in rule.accounts:
                add(("groups", group, "default_account"),
                    f"{rule.default_account!r} is not among this group's accounts "
                    f"({', '.join(rule.accounts) or 'none'})")
        found.extend(self._cluster_problems())
        found.extend(self._connection_problems())
        found.extend(self._depot_problems())
        return found

    def _depot_problems(self) -> Iterator[tuple[Path, str]]:
        for name, depot in self.depots.items():
            if depot.group in depot.read_only_groups:
                yield (("depots", name, "read_only_groups"),
                       f"the owning group {depot.group!r} is listed as read-only as well")
            for i, group in enumerate(depot.read_only_groups):
                if group in depot.read_only_groups[:i]:
                    yield (("depots", name, "read_only_groups", i), f"{group!r} is listed twice")
            # Links and permissions are made for this exact string: it must be the canonical one.
            plain = "/" + posixpath.normpath(depot.path).lstrip("/")
            if plain != depot.path:
                yield ("depots", name, "path"), f"{depot.path!r} must be written plainly, as {plain!r}"
            elif depot.path == "/":
                yield ("depots", name, "path"), "a depot cannot be the root directory"
        # A depot inside another would be reachable only through the outer depot's permissions.
        for i, (name, depot) in enumerate(self.depots.items()):
            for j, (other, outer) in enumerate(self.depots.items()):
                if i == j:
                    continue
                if depot.path == outer.path:
                    if j < i:  # reported once, on the later entry
                        yield ("depots", name, "path"), f"depot {other!r} has the same path"
                elif depot.path.startswith(outer.path.rstrip("/") + "/"):
                    yield (("depots", name, "path"),
                           f"{depot.path} lies inside depot {other!r} ({outer.path}); depots cannot nest")

    def _cluster_problems(self) -> Iterator[tuple[Path, str]]:
        c = self.cluster
        if c.transport == "ssh" and c.ssh is None:
            yield ("cluster", "transport"), "transport ssh needs a cluster.ssh section (the login node)"
        if c.transport == "rest" and c.rest is None:
            yield ("cluster", "transport"), "transport rest needs a cluster.rest section (slurmrestd)"
        if c.transport not in ADAPTERS[c.scheduler].transports:
            yield (("cluster", "transport"),
                   f"transport {c.transport} does not work with {c.scheduler} (use "
                   f"{', '.join(ADAPTERS[c.scheduler].transports)})")
        if c.transport == "ssh" and c.ssh is not None and not c.ssh.service_user:
            # The watcher's one query per tick is nobody's in particular: it needs an account.
            yield (("cluster", "ssh", "service_user"), "transport ssh needs service_user: the "
                   "account the hub's status queries log in to the login node as (without "
                   "key_template it also runs each user's commands there through sudo)")
        if c.rest is not None:
            from schedulers.slurmrest import unsupported_version

            sentence = unsupported_version(c.rest.api_version)
            if sentence:
                yield ("cluster", "rest", "api_version"), sentence
        try:
            probe = self.job.workdir.format(user="u", home="/h")
        except (KeyError, IndexError, ValueError):
            yield (("job", "workdir"), "only {user} and {home} may stand in braces here")
        else:
            if "{user}" not in self.job.workdir and "{home}" not in self.job.workdir:
                yield (("job", "workdir"), "every user would share one working directory: put "
                       "{user} or {home} in it")
            elif not probe.startswith("/"):
                yield ("job", "workdir"), "must be an absolute path (or start with {home})"
        prefix = ADAPTERS[c.scheduler].directive_prefix
        for i, line in enumerate(self.job.extra_directives):
            if not line.startswith(prefix):
                yield (("job", "extra_directives", i),
                       f"{line!r} must start with {prefix!r} for a {c.scheduler} cluster")
        if "\0" in self.job.prologue:
            yield ("job", "prologue"), "the prologue holds a NUL character"

    def _connection_problems(self) -> Iterator[tuple[Path, str]]:
        conn = self.connection
        if conn.mode in ("direct", "login-node") and conn.hub_api_url is None:
            yield (("connection", "hub_api_url"),
                   f"{conn.mode} mode needs hub_api_url: the address jobs use to reach the hub")
        if conn.mode in ("reverse", "login-node") and conn.ssh_host is None:
            yield (("connection", "ssh_host"),
                   f"{conn.mode} mode needs ssh_host: the SSH server the tunnel goes through")
        if conn.mode == "reverse" and conn.authorized_keys is None:
            yield (("connection", "authorized_keys"), "reverse mode needs authorized_keys: the "
                   "tunnel account's file the hub adds each job's key to")
        if conn.mode == "reverse" and conn.known_hosts is None:
            yield (("connection", "known_hosts"), "reverse mode needs known_hosts: the hub "
                   "host's SSH key, which jobs are pinned to")
        if conn.mode == "reverse" and (conn.hub_api_url or "").startswith("https:"):
            yield (("connection", "hub_api_url"), "reverse mode needs an http:// hub API URL "
                   "(jobs reach it inside their SSH tunnel, which encrypts it)")
        if conn.first_port > conn.last_port:
            yield ("connection", "last_port"), "last_port is below first_port"
        if conn.mode == "login-node":
            for name, what in (("login_node_user", "the account the hub logs in as there"),
                               ("login_node_key", "the hub's key for that account"),
                               ("known_hosts", "the login node's host key")):
                if getattr(conn, name) is None:
                    yield ("connection", name), f"login-node mode needs {name}: {what}"


def _unknown(what: str, name: str, known: Mapping[str, object]) -> str:
    names = ", ".join(known) or "none"
    return f"there is no {what} {name!r} in this policy (known: {names})"
