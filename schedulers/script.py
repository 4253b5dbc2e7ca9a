"""Pieces of a batch script that Slurm's and PBS's builders write the same way."""

from __future__ import annotations

from collections.abc import Mapping

from schedulers.model import SAFE_ENV_NAME, UnsafeValue


def shell_quote(value: str) -> str:
    """Single-quote for bash. Values are validated first; this keeps odd-but-valid ones literal."""
    if any(c in value for c in "\0\n\r"):
        raise UnsafeValue(f"value {value!r} spans lines")
    return "'" + value.replace("'", "'\"'\"'") + "'"


def export_lines(environment: Mapping[str, str]) -> list[str]:
    """`export NAME='value'` for each variable, in order; raises UnsafeValue for a bad name or value.

    The values go into the script rather than through `qsub -v`, whose Variable_List any user can
    read with `qstat -f`; Slurm's builder does the same so both scripts carry them alike.
    """
    lines = []
    for name, value in environment.items():
        if not SAFE_ENV_NAME.match(name):
            raise UnsafeValue(f"environment variable name {name!r} is not valid")
        lines.append(f"export {name}={shell_quote(value)}")
    return lines
