"""The lab's own PostgreSQL: the lab's, on a socket only root may use, and kept across restarts."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
import sqlalchemy

from gateway.lab import Lab, postgres

pytestmark = pytest.mark.lab


def test_postgres_runs_as_its_own_account_on_a_private_socket_and_no_tcp_port(lab: dict) -> None:
    pg = lab["postgres"]
    pid = lab["pids"]["postgres"]
    assert Path(f"/proc/{pid}").stat().st_uid == postgres._owner_ids()[0]  # not root
    sockets = Path(pg["socket_dir"])
    # Entered by its owner and, through its group, the hub's account (hpcgate-hub) only.
    from gateway.lab.accounts import ensure_hub_account

    assert sockets.stat().st_mode & 0o777 == 0o710 and (sockets / f".s.PGSQL.{pg['port']}").exists()
    assert sockets.stat().st_gid == ensure_hub_account()[1]
    # No TCP listener of the postmaster or its children: ss names every listener's process.
    listeners = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    assert f"pid={pid}," not in listeners and '"postgres"' not in listeners


def test_root_logs_in_as_the_hub_role_and_a_lab_user_cannot(lab: dict) -> None:
    engine = sqlalchemy.create_engine(postgres.database_url(lab, "postgres"))
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT current_user")).scalar() == "hpcgate"
    finally:
        engine.dispose()
    # alice cannot even reach the socket; and root cannot be the superuser.
    as_alice = subprocess.run(["sudo", "-u", "alice", "psql", "-h", lab["postgres"]["socket_dir"],
                               "-U", "hpcgate", "-d", "postgres", "-c", "SELECT 1"],
                              capture_output=True, text=True, cwd="/")
    assert as_alice.returncode != 0 and "Permission denied" in as_alice.stderr, as_alice.stderr
    as_superuser = subprocess.run(["psql", "-h", lab["postgres"]["socket_dir"], "-U", "postgres",
                                   "-d", "postgres", "-c", "SELECT 1"], capture_output=True, text=True)
    assert "Peer authentication failed" in as_superuser.stderr


def test_data_survives_a_restart_by_lab_up(lab: dict) -> None:
    name = f"hub_t{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(lab, name)
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE kept (v text)"))
            conn.execute(sqlalchemy.text("INSERT INTO kept VALUES ('before')"))
        engine.dispose()
        postgres.stop(lab["pids"]["postgres"])
        again = Lab(lab["dir"]).up(nodes=2)  # restarts what is not running: the database only
        assert again["pids"]["postgres"] != lab["pids"]["postgres"]
        assert {k: v for k, v in again["pids"].items() if k != "postgres"} == {
            k: v for k, v in lab["pids"].items() if k != "postgres"}
        lab["pids"]["postgres"] = again["pids"]["postgres"]  # the session's shared lab info
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT v FROM kept")).scalars().all() == ["before"]
        engine.dispose()
    finally:
        postgres.drop_database(lab, name)
    assert name not in postgres.databases(lab)


def test_a_lab_without_postgres_says_how_to_start_it(tmp_path: Path) -> None:
    from gateway.lab.procs import LabError

    with pytest.raises(LabError, match="hpcgate lab up --postgres"):
        postgres.create_database({"dir": str(tmp_path)}, "hub_x")
    assert os.listdir(tmp_path) == []
