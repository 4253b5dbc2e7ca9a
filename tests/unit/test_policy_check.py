"""check-config's logic with a scripted command runner (the real runs are in
tests/integration/test_check_config.py): what it runs, how it passes the environment, what it says."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Sequence
from pathlib import Path

from gateway.admin.check import ConfigChecker, Report, main
from gateway.policy.load import load_policy_text
from schedulers.runners import CommandResult, SudoRunner
from schedulers.slurmrest import unsupported_version

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "slurm"
PARTITIONS = (FIXTURES / "scontrol_show_partition_oneliner_lab_22.05.8.txt").read_text()
NODES = (FIXTURES / "scontrol_show_node_oneliner_lab_22.05.8.txt").read_text()
DEMO = (ROOT / "site_configs" / "demo.yaml").read_text()
# No directory in these unit runs (the integration test binds to the lab's slapd).
NO_DIRECTORY = re.sub(r"\ndirectory:\n(  .*\n)+", "\n", DEMO)


class ScriptedRunner:
    """A runner (the Runner protocol) answering like a healthy lab; `fail` maps a command name to
    (rc, stderr)."""

    timeout = 30.0

    def __init__(self, fail: dict[str, tuple[int, str]] | None = None):
        self.calls: list[tuple[list[str], str | None]] = []
        self.fail = fail or {}

    async def run(self, argv: Sequence[str], *, user: str | None = None, input: str | None = None,
                  timeout: float | None = None) -> CommandResult:
        argv = list(argv)
        self.calls.append((argv, user))
        words = [a for a in argv if "=" not in a and a not in ("env", "-i")]
        cmd = words[0] if words else ""
        if cmd.endswith("python"):
            cmd = "python"
        if cmd in self.fail:
            rc, err = self.fail[cmd]
            return CommandResult(rc, "", err)
        answers = {"id": "root\n", "python": "3.11.2 /opt/x/gateway/__init__.py\n",
                   "sh": "/usr/bin/srun\n", "test": ""}
        if cmd == "scontrol":
            return CommandResult(0, PARTITIONS if "partition" in argv else NODES, "")
        return CommandResult(0, answers.get(cmd, ""), "")

    async def close(self) -> None:
        return None


def check(text: str, runner: ScriptedRunner) -> Report:
    report = Report()
    asyncio.run(ConfigChecker(load_policy_text(text, "demo.yaml"), "demo.yaml", report,
                              runner=runner, test_user="root").run_all())
    return report


def test_a_healthy_cluster_passes_and_every_command_runs_as_the_test_user() -> None:
    runner = ScriptedRunner()
    report = check(NO_DIRECTORY, runner)
    assert report.failures == [], report.render()
    assert report.summary() == "Result: every check passed."
    # Queue limits come from the adapter (scontrol show partition / node), as the test user.
    assert ["scontrol", "show", "partition", "--oneliner"] in [argv for argv, _ in runner.calls]
    assert "The policy's limits fit Slurm's partitions (debug MaxTime 30 minutes, long MaxTime " \
           "2 days)." in report.lines("ok")
    assert all(user == "root" for _, user in runner.calls)
    python = next(argv for argv, _ in runner.calls if "-c" in argv and argv[-2] == "-c")
    assert python[:2] == ["env", "-i"]  # the interpreter is tried in a clean, job-like environment
    assert "PATH=/opt/hpcgate/venv/bin:/usr/local/bin:/usr/bin:/bin" in python


def test_the_runner_is_the_hubs_with_the_policys_path_environment_and_timeout() -> None:
    text = NO_DIRECTORY.replace("  transport: sudo\n", "  transport: sudo\n  command_timeout: 7s\n"
                                "  command_path: /opt/slurm/bin:/usr/bin:/bin\n")
    checker = ConfigChecker(load_policy_text(text, "demo.yaml"), "demo.yaml", Report())
    runner = checker.runner.runner
    assert isinstance(runner, SudoRunner)
    assert runner.timeout == 7
    assert runner.env == {"PATH": "/opt/slurm/bin:/usr/bin:/bin",
                          "SLURM_CONF": "/var/tmp/hpcgate-lab/etc/slurm.conf"}


def test_each_failure_is_one_sentence_and_the_exit_code_says_so() -> None:
    report = check(NO_DIRECTORY, ScriptedRunner({"scontrol": (1, "scontrol: error: Unable to contact "
                                                                 "slurm controller (connect failure)\n")}))
    assert report.failures == ["Asked as root: `scontrol show partition` failed: scontrol: error: "
                               "Unable to contact slurm controller (connect failure)."]
    report = check(NO_DIRECTORY, ScriptedRunner({"python": (1, "Traceback...\nModuleNotFoundError: "
                                                                "No module named 'gateway'\n")}))
    (failure,) = report.failures
    assert "cannot import the gateway: ModuleNotFoundError: No module named 'gateway'" in failure


def test_unreadable_slurm_conf_stops_before_commands_that_would_hang() -> None:
    runner = ScriptedRunner({"test": (1, "")})
    report = check(NO_DIRECTORY, runner)
    assert any("cannot read SLURM_CONF=/var/tmp/hpcgate-lab/etc/slurm.conf" in f for f in report.failures)
    assert not any("scontrol" in argv for argv, _ in runner.calls)


def test_an_unsupported_rest_api_version_is_refused_in_words(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(DEMO.replace("  transport: sudo\n", "  transport: rest\n  rest:\n"
                                 "    url: http://127.0.0.1:6820\n    api_version: v0.0.39\n"))
    out = io.StringIO()
    assert main([str(site)], out=out) != 0
    sentence = unsupported_version("v0.0.39")
    assert sentence and sentence in out.getvalue()


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
