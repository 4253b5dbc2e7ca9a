"""A command the runner's `env` cannot find or run is the site's PATH or modes, said as such: not
a scheduler's refusal ("PBS refused the job: env: 'qsub': No such file or directory")."""

from __future__ import annotations

import pytest

from schedulers.errors import SchedulerUnavailable
from schedulers.runners import CommandResult, LocalRunner, check_found

PATH = "/opt/pbs/bin:/usr/bin:/bin"


@pytest.mark.parametrize("stderr", ["env: ‘qsub’: No such file or directory\n",  # GNU env, UTF-8
                                    "env: 'qsub': No such file or directory\n",  # C locale
                                    "env: qsub: No such file or directory\n"])  # older coreutils
def test_a_command_missing_from_path_names_the_path_and_the_setting(stderr: str) -> None:
    with pytest.raises(SchedulerUnavailable) as err:
        check_found(CommandResult(127, "", stderr), ["qsub"], PATH, "alice")
    assert err.value.message == (
        f"The command `qsub` is not in the scheduler's PATH for alice ({PATH}): set "
        "cluster.command_path in the site policy to include the directory that holds it.")
    assert err.value.raw == stderr


def test_a_command_the_user_may_not_run_says_so() -> None:
    with pytest.raises(SchedulerUnavailable, match="`qsub` is in the scheduler's PATH .* but alice "
                                                   "may not run it"):
        check_found(CommandResult(126, "", "env: ‘qsub’: Permission denied\n"), ["qsub"], PATH, "alice")


@pytest.mark.parametrize("result, argv", [
    (CommandResult(0, "12.pbs\n", ""), ["qsub"]),
    (CommandResult(127, "", "qsub: some site hook exited 127\n"), ["qsub"]),  # not env's words
    # Another command's absence (the job's python, behind `env -i`): its caller words it.
    (CommandResult(127, "", "env: ‘/opt/py/bin/python’: No such file or directory\n"), ["env", "-i"]),
    (CommandResult(127, "", "env: ‘/opt/py/bin/python’: No such file or directory\n"),
     ["/opt/py/bin/python"]),
])
def test_other_answers_pass_through(result: CommandResult, argv: list[str]) -> None:
    assert check_found(result, argv, PATH, "alice") is result


async def test_the_hubs_own_commands_are_looked_up_in_the_policys_path() -> None:
    runner = LocalRunner(env={"PATH": "/nonexistent/pbs/bin"})
    with pytest.raises(SchedulerUnavailable) as err:
        await runner.run(["qstat", "-x"])
    assert err.value.message.startswith(
        "The command `qstat` is not in the scheduler's PATH on the hub host (/nonexistent/pbs/bin)")


async def test_commands_run_nicer_than_the_hub_so_a_storm_of_them_cannot_starve_it() -> None:
    import os

    from schedulers.runners import COMMAND_NICE

    # The command reads its own nice value after a pause: the runner sets it just after the exec.
    result = await LocalRunner().run(["sh", "-c", "sleep 0.3; nice"])
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + COMMAND_NICE)


async def test_with_pidfd_watching_a_command_costs_the_hub_no_thread() -> None:
    import asyncio
    import threading
    import warnings

    from gateway.hub import watch_children_by_pidfd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        before_watcher = asyncio.get_child_watcher()
    try:
        assert watch_children_by_pidfd()  # Linux >= 5.3, as on every supported hub host
        before = set(threading.enumerate())
        running = asyncio.ensure_future(LocalRunner().run(["sh", "-c", "sleep 0.5; echo done"]))
        await asyncio.sleep(0.25)  # the command runs: a thread watcher would have a thread now
        # No thread of its own (others' threads may end meanwhile: compare identities).
        assert set(threading.enumerate()) <= before
        result = await running
        assert (result.returncode, result.stdout) == (0, "done\n")
    finally:  # other tests run on other loops: give them back the thread watcher
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(before_watcher)
