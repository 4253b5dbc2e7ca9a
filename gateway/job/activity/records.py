"""The activity record: its envelope, what is kept of code, and the JSON Schema it follows.

Only the standard library here: the hub imports this module to validate what jobs deliver.
The format is `gateway/job/activity_schema.json` (versioned by `schema_version`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from importlib import resources
from typing import Any

SCHEMA_VERSION = 1
CODE_POLICIES = ("none", "hash", "full")
EXECUTION_OUTCOMES = ("ok", "error", "aborted", "unfinished")
EVENT_KINDS = ("kernel_start", "kernel_restart", "kernel_interrupt", "kernel_shutdown", "kernel_died",
               "notebook_open", "notebook_save", "terminal_open", "terminal_close", "server_start",
               "server_stop", "download")
KINDS = ("execution", *EVENT_KINDS)


def now_iso() -> str:
    return iso(datetime.now(timezone.utc).timestamp())


def iso(epoch: float) -> str:
    """UTC, microseconds, `Z`: sorts as text and parses everywhere."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def keep_code(policy: str, code: str) -> dict[str, Any]:
    """What a record keeps of executed code under the site policy's `activity.code`:
    none (nothing), hash (SHA-256 and line count, the default) or full (the text too)."""
    if policy not in CODE_POLICIES:
        raise ValueError(f"activity.code must be one of {', '.join(CODE_POLICIES)}, not {policy!r}")
    if policy == "none":
        return {"kept": "none"}
    kept: dict[str, Any] = {"kept": policy, "sha256": hashlib.sha256(code.encode()).hexdigest(),
                            "lines": len(code.splitlines())}
    if policy == "full":
        kept["text"] = code
    return kept


@dataclass(frozen=True)
class Origin:
    """Who and where, the same on every record of one server."""

    user: str
    server: str = ""
    job_id: str | None = None
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])

    @classmethod
    def from_environment(cls) -> Origin:
        import getpass

        env = os.environ
        return cls(user=env.get("JUPYTERHUB_USER") or getpass.getuser(),
                   server=env.get("JUPYTERHUB_SERVER_NAME", ""),
                   job_id=env.get("SLURM_JOB_ID") or env.get("PBS_JOBID") or None,
                   node=env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0])

    def record(self, kind: str, time: str | None = None, **fields: Any) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "id": uuid.uuid4().hex, "kind": kind,
                "time": time or now_iso(), "user": self.user, "server": self.server,
                "job_id": self.job_id, "node": self.node, **fields}


def encode(record: dict[str, Any]) -> bytes:
    """One JSON Lines line."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


@cache
def schema() -> dict[str, Any]:
    text = resources.files("gateway.job").joinpath("activity_schema.json").read_text()
    return json.loads(text)


@cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def problems(record: Any) -> list[str]:
    """Why `record` does not follow the schema (empty when it does)."""
    return [f"{'/'.join(str(p) for p in err.absolute_path) or 'record'}: {err.message}"
            for err in _validator().iter_errors(record)]
