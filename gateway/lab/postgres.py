"""The lab's own PostgreSQL: one cluster in `DIR/postgres`, for hubs that use it as their database.

`hpcgate lab up --postgres` starts it (and every later `up` of that lab does too); `down` stops it.
The cluster belongs to the `postgres` Unix account (PostgreSQL refuses to run as root) and
listens only on a Unix socket in `DIR/postgres/run`, which only its owner, the hub's account
(hpcgate-hub, by its group) and root can enter: no TCP port, nothing for the lab users' jobs to
reach. There is no password anywhere: the hub's account (and root, for the lab's own set-up) logs
in as the database role `hpcgate` by peer authentication (the kernel says who is connecting;
`pg_ident.conf` maps those two, and nobody else, to that role).

Each LabHub gets its own database (`create_database`), named after its state directory, so a
hub restarted on the same state finds its data again.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from gateway.lab.procs import LabError, pid_alive, start_daemon, wait_for

ROLE = "hpcgate"  # the hubs' database role
OWNER = "postgres"  # the Unix account that runs the server (Debian's package creates it)
# The socket's name is .s.PGSQL.<port> in the lab's own directory: the number does not have to be
# free on the machine, since nothing listens on TCP.
PORT = 5432
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def bin_dir() -> Path:
    """The newest installed PostgreSQL's server programs (Debian keeps them out of PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if not found:
        raise LabError("The lab's PostgreSQL needs the Debian package postgresql: "
                       "apt-get install -y postgresql   (or run `make setup`)")
    return found[-1].parent


def paths(lab_dir: Path) -> dict[str, Path]:
    base = lab_dir / "postgres"
    return {"base": base, "data": base / "data", "socket_dir": base / "run",
            "log": lab_dir / "log" / "postgres.log"}


def describe(lab_dir: Path) -> dict[str, Any]:
    """What lab.json says about the database server."""
    p = paths(lab_dir)
    return {"socket_dir": str(p["socket_dir"]), "port": PORT, "role": ROLE,
            "data_dir": str(p["data"]), "log": str(p["log"]),
            "url_example": database_url({"postgres": {"socket_dir": str(p["socket_dir"]),
                                                      "port": PORT, "role": ROLE}}, "DBNAME")}


def _owner_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(OWNER)
    except KeyError as err:
        raise LabError("The Unix account 'postgres' is missing: install the Debian package "
                       "postgresql.") from err
    return entry.pw_uid, entry.pw_gid


def _as_owner(argv: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          user=OWNER, group=OWNER, extra_groups=[],
                          env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    if proc.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def ensure_cluster(lab_dir: Path) -> None:
    """initdb once; the access files rewritten at every start (they are the lab's, not initdb's)."""
    from gateway.lab.accounts import HUB_USER, ensure_hub_account

    p = paths(lab_dir)
    uid, gid = _owner_ids()
    _, hub_gid = ensure_hub_account()
    # The hub's account passes through base and reaches the socket by its group; the data stays
    # the owner's alone (initdb makes it 0700).
    for key, mode in (("base", 0o710), ("socket_dir", 0o710)):
        p[key].mkdir(mode=mode, exist_ok=True)
        os.chown(p[key], uid, hub_gid)
        p[key].chmod(mode)
    if not (p["data"] / "PG_VERSION").exists():
        if p["data"].exists():  # an initdb that was interrupted: it refuses a non-empty directory
            subprocess.run(["rm", "-rf", str(p["data"])], check=True)
        _as_owner([str(bin_dir() / "initdb"), "-D", str(p["data"]), "-U", OWNER, "-E", "UTF8",
                   "--locale=C.UTF-8", "--auth=peer", "--no-instructions"], cwd=p["base"])
    hba = p["data"] / "pg_hba.conf"
    hba.write_text("# hpcgate lab (gateway/lab/postgres.py): the Unix socket only, peer auth.\n"
                   "local all postgres peer\n"
                   f"local all {ROLE} peer map=hub\n")
    ident = p["data"] / "pg_ident.conf"
    ident.write_text("# Who may log in as the hubs' role: the hub's account, root (the lab's own "
                     "set-up) and nobody else.\n"
                     f"hub {HUB_USER} {ROLE}\nhub root {ROLE}\n")
    for f in (hba, ident):
        os.chown(f, uid, gid)
        f.chmod(0o600)


def _ready(lab_dir: Path) -> bool:
    p = paths(lab_dir)
    proc = subprocess.run([str(bin_dir() / "pg_isready"), "-q", "-h", str(p["socket_dir"]),
                           "-p", str(PORT)], capture_output=True, timeout=10)
    return proc.returncode == 0


def start(lab_dir: Path) -> int:
    """Start the server (the cluster made if missing); its pid once it accepts connections."""
    ensure_cluster(lab_dir)
    p = paths(lab_dir)
    argv = [str(bin_dir() / "postgres"), "-D", str(p["data"]), "-p", str(PORT),
            "-c", "listen_addresses=", "-c", f"unix_socket_directories={p['socket_dir']}",
            # The socket itself is open to all: its directory (0710, the hub's group) is the gate,
            # and unix_socket_group would need the postgres account in the hub's group.
            "-c", "unix_socket_permissions=0777", "-c", "logging_collector=off",
            "-c", "log_line_prefix=%m [%p] "]
    pid = start_daemon(argv, lab_dir, p["log"], user=OWNER)
    wait_for(lambda: _ready(lab_dir) or not pid_alive(pid), 30, "PostgreSQL", p["log"])
    if not pid_alive(pid):
        tail = "\n  ".join(p["log"].read_text(errors="replace").splitlines()[-10:])
        raise LabError(f"PostgreSQL exited at start. Last lines of {p['log']}:\n  {tail}")
    _as_owner([str(bin_dir() / "psql"), "-q", "-h", str(p["socket_dir"]), "-p", str(PORT),
               "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c",
               f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') "
               f"THEN CREATE ROLE {ROLE} LOGIN CREATEDB; END IF; END $$;"], cwd=p["base"])
    return pid


def stop(pid: int | None, timeout: float = 15) -> None:
    """Fast shutdown (SIGINT): open sessions are ended. SIGTERM would wait for every client to
    disconnect, and a hub left running would hold `lab down` until the SIGKILL, which leaves
    shared memory and a crash recovery behind."""
    if not pid_alive(pid):
        return
    assert pid is not None
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown: recovery at the next start
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def database_url(info: dict[str, Any], database: str) -> str:
    """The SQLAlchemy URL of `database` for JupyterHub's `db_url`: the role, no password (peer
    authentication), the socket directory as the host."""
    pg = info["postgres"]
    return f"postgresql+psycopg2://{pg['role']}@/{database}?host={pg['socket_dir']}&port={pg['port']}"


def _psql(info: dict[str, Any], sql: str, **variables: str) -> str:
    """Run `sql` as the hubs' role; values as psql variables (`:'name'` quotes a literal,
    `:"name"` an identifier), so no name is pasted into SQL text."""
    pg = info["postgres"]
    argv = [str(bin_dir() / "psql"), "-qtA", "-h", pg["socket_dir"], "-p", str(pg["port"]),
            "-U", pg["role"], "-d", "postgres", "-v", "ON_ERROR_STOP=1"]
    for key, value in variables.items():
        argv += ["-v", f"{key}={value}"]
    # On stdin: psql interpolates variables there, not in -c.
    proc = subprocess.run(argv, input=sql + "\n", capture_output=True, text=True, timeout=60,
                          cwd="/", env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    if proc.returncode != 0:
        raise LabError(f"PostgreSQL refused `{sql}`: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"not a lab database name: {name!r}")


def require(info: dict[str, Any]) -> None:
    if "postgres" not in info:
        raise LabError(f"The lab in {info['dir']} runs no PostgreSQL: start it with "
                       "`hpcgate lab up --postgres`.")


def create_database(info: dict[str, Any], name: str) -> str:
    """Create `name` (owned by the hubs' role) unless it exists; its URL."""
    require(info)
    _check_name(name)
    if _psql(info, "SELECT 1 FROM pg_database WHERE datname = :'name';", name=name) != "1":
        _psql(info, 'CREATE DATABASE :"name";', name=name)
    return database_url(info, name)


def drop_database(info: dict[str, Any], name: str) -> None:
    require(info)
    _check_name(name)
    _psql(info, 'DROP DATABASE IF EXISTS :"name" WITH (FORCE);', name=name)


def databases(info: dict[str, Any]) -> list[str]:
    require(info)
    out = _psql(info, "SELECT datname FROM pg_database JOIN pg_roles ON datdba = pg_roles.oid "
                      "WHERE rolname = :'role' ORDER BY datname;", role=ROLE)
    return out.split() if out else []
