"""check-config's logic with a scripted command runner (the real runs are in
tests/integration/test_check_config.py): what it runs, how it passes the environment, what it says."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

from gateway.admin.check import ConfigChecker, Report, main
from gateway.policy.load import load_policy_text

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "slurm"
PARTITIONS = (FIXTURES / "scontrol_show_partition_oneliner_lab_22.05.8.txt").read_text()
NODES = (FIXTURES / "scontrol_show_node_oneliner_lab_22.05.8.txt").read_text()
DEMO = (ROOT / "site_configs" / "demo.yaml").read_text()
# No directory in these unit runs (the integration test binds to the lab's slapd).
NO_DIRECTORY = re.sub(r"\ndirectory:\n(  .*\n)+", "\n", DEMO)


class ScriptedRun:
    """Answers like a healthy lab; `fail` maps a command name to (rc, stderr)."""

    def __init__(self, fail: dict[str, tuple[int, str]] | None = None):
        self.calls: list[tuple[list[str], str | None]] = []
        self.fail = fail or {}

    def __call__(self, argv: Sequence[str], user: str | None, input: str | None = None
                 ) -> tuple[int, str, str]:
        argv = list(argv)
        self.calls.append((argv, user))
        words = [a for a in argv if "=" not in a and a not in ("env", "-i")]
        cmd = words[0] if words else ""
        if cmd.endswith("python"):
            cmd = "python"
        if cmd in self.fail:
            rc, err = self.fail[cmd]
            return rc, "", err
        answers = {
            "id": "root\n", "sinfo": "debug\nlong\n", "python": "3.11.2 /opt/x/gateway/__init__.py\n",
            "sh": "/usr/bin/srun\n", "test": "",
        }
        if cmd == "scontrol":
            return 0, PARTITIONS if "partition" in argv else NODES, ""
        return 0, answers.get(cmd, ""), ""


def check(text: str, run: ScriptedRun) -> Report:
    report = Report()
    ConfigChecker(load_policy_text(text, "demo.yaml"), "demo.yaml", run, report,
                  test_user="root").run_all()
    return report


def test_a_healthy_cluster_passes_and_the_environment_travels_in_the_argv() -> None:
    run = ScriptedRun()
    report = check(NO_DIRECTORY, run)
    assert report.failures == [], report.render()
    assert report.summary() == "Result: every check passed."
    sinfo = next(argv for argv, _ in run.calls if "sinfo" in argv)
    # sudo drops the caller's environment: SLURM_CONF and PATH are in the argv itself.
    assert sinfo[:1] == ["env"]
    assert "SLURM_CONF=/var/tmp/hpcgate-lab/etc/slurm.conf" in sinfo
    assert all(user == "root" for _, user in run.calls)
    python = next(argv for argv, _ in run.calls if "-c" in argv and argv[-2] == "-c")
    assert python[:2] == ["env", "-i"]  # the interpreter is tried in a clean, job-like environment
    assert "PATH=/opt/hpcgate/venv/bin:/usr/local/bin:/usr/bin:/bin" in python


def test_each_failure_is_one_sentence_and_the_exit_code_says_so() -> None:
    report = check(NO_DIRECTORY, ScriptedRun({"sinfo": (1, "sinfo: error: Unable to contact slurm "
                                                           "controller (connect failure)\n")}))
    assert report.failures == ["`sinfo` as root failed: sinfo: error: Unable to contact slurm "
                               "controller (connect failure)."]
    report = check(NO_DIRECTORY, ScriptedRun({"python": (1, "Traceback...\nModuleNotFoundError: "
                                                            "No module named 'gateway'\n")}))
    (failure,) = report.failures
    assert "cannot import the gateway: ModuleNotFoundError: No module named 'gateway'" in failure


def test_unreadable_slurm_conf_stops_before_commands_that_would_hang() -> None:
    run = ScriptedRun({"test": (1, "")})
    report = check(NO_DIRECTORY, run)
    assert any("cannot read SLURM_CONF=/var/tmp/hpcgate-lab/etc/slurm.conf" in f for f in report.failures)
    assert not any("sinfo" in argv for argv, _ in run.calls)


def test_invalid_file_exits_1_with_file_and_line(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(DEMO.replace("max_walltime: 30m", "max_walltime: soon"))
    out = io.StringIO()
    assert main([str(site)], out=out) == 1
    text = out.getvalue()
    assert f"✗ {site}, line " in text and "partitions.debug.max_walltime" in text
    assert text.rstrip().endswith("Result: 1 problem found.")


def test_schema_reference() -> None:
    out = io.StringIO()
    assert main(["--schema"], out=out) == 0
    assert "max_walltime:" in out.getvalue()


def test_report_rendering() -> None:
    report = Report()
    report.section("Scheduler")
    report.ok("fine")
    report.fail("broken.")
    report.warn("odd.")
    assert report.render() == ("Scheduler\n  ✓ fine\n  ✗ broken.\n  ! odd.\n"
                               "Result: 1 problem found (1 warning).")
