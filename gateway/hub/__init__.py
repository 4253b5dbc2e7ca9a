"""The hub process: the spawner, connection modes, the scheduler connection, hub pages and APIs.

JupyterHub builds its routes once, from its handler lists, when it starts. hpcgate's own routes
are added by one explicit call in the hub's configuration (never as a side effect of an import):

    from gateway.hub import configure
    configure(c, "/etc/hpcgate/site.yaml")  # the spawner, its policy (checked), hpcgate's routes
"""

from __future__ import annotations

from typing import Any


def _routes() -> tuple[tuple[list[Any], str, type], ...]:
    from jupyterhub import apihandlers, handlers

    from gateway.hub.activity_page import (
        EXPORT_PATH,
        ActivityExportHandler,
        ActivityPageHandler,
    )
    from gateway.hub.activity_page import PAGE_PATH as ACTIVITY_PAGE_PATH
    from gateway.hub.api import (
        ACTIVITY_PATH,
        HEALTH_PATH,
        REPORT_PATH,
        ActivityRecordsHandler,
        ServerAddressHandler,
        WatcherHealthHandler,
    )
    from gateway.hub.depots_page import PAGE_PATH, DepotsHandler
    from gateway.hub.sessions_api import (
        LOG_PATH,
        SESSIONS_PATH,
        USER_SESSIONS_PATH,
        JobLogHandler,
        SessionsHandler,
        UserSessionsHandler,
    )
    from gateway.hub.sessions_page import OPERATOR_PATH, OperatorSessionsHandler

    return ((apihandlers.default_handlers, REPORT_PATH, ServerAddressHandler),
            (apihandlers.default_handlers, HEALTH_PATH, WatcherHealthHandler),
            (apihandlers.default_handlers, ACTIVITY_PATH, ActivityRecordsHandler),
            (apihandlers.default_handlers, SESSIONS_PATH, SessionsHandler),
            (apihandlers.default_handlers, LOG_PATH, JobLogHandler),
            (apihandlers.default_handlers, USER_SESSIONS_PATH, UserSessionsHandler),
            (handlers.default_handlers, PAGE_PATH, DepotsHandler),
            (handlers.default_handlers, OPERATOR_PATH, OperatorSessionsHandler),
            (handlers.default_handlers, ACTIVITY_PAGE_PATH, ActivityPageHandler),
            (handlers.default_handlers, EXPORT_PATH, ActivityExportHandler))


def install_handlers() -> None:
    """Add the launcher's report API (/hub/api/hpcgate/report), the activity records API
    (/hub/api/hpcgate/activity: servers deliver, readers read), the scheduler health API for
    operators (/hub/api/hpcgate/health), the sessions API (/hub/api/hpcgate/sessions...), the
    depots page (/hub/depots), the operator's sessions view (/hub/sessions/all) and the activity
    page (/hub/activity, /hub/activity/export) to JupyterHub's handlers. Call it from
    jupyterhub_config.py (`configure()` does); twice is harmless."""
    for table, path, handler in _routes():
        if not any(route[0] == path for route in table):
            table.append((path, handler))


def handlers_installed() -> bool:
    """Whether install_handlers() ran in this process (the spawner refuses to start otherwise:
    its launcher could never report where the server listens)."""
    return all(any(route[0] == path and route[1] is handler for route in table)
               for table, path, handler in _routes())


def configure(c: Any, policy_file: str) -> None:
    """jupyterhub_config.py's hpcgate part in one call: the spawner, its site policy, hpcgate's
    routes and its metrics on /hub/metrics (`gateway.hub.metrics`). A policy the hub cannot work
    with (it does not load, or names a scheduler and transport that cannot be built, such as
    transport ssh without a service account for the status queries, or a slurmrestd key it cannot
    read) stops the hub here, with the reason."""
    from gateway.hub.scheduling import scheduler_settings
    from gateway.policy.load import PolicyFileError, load_policy
    from schedulers.registry import make_scheduler

    try:
        make_scheduler(scheduler_settings(load_policy(policy_file).cluster))
    except (PolicyFileError, ValueError, OSError) as err:
        raise SystemExit(f"hpcgate: the hub cannot start with the site policy {policy_file}:"
                         f"\n{err}") from None
    from gateway.hub.activity_access import READ_ALL_DESCRIPTION, READ_ALL_SCOPE
    from gateway.hub.sessions_page import TEMPLATE_DIR

    c.JupyterHub.spawner_class = "hpcgate"
    c.BatchSpawner.policy_file = policy_file
    # The sessions page (home.html) and the nav bar and walltime banner of every page (page.html).
    paths = list(c.JupyterHub.template_paths) if "template_paths" in c.JupyterHub else []
    c.JupyterHub.template_paths = [TEMPLATE_DIR, *(p for p in paths if p != TEMPLATE_DIR)]
    # Several sessions where the policy allows them (groups' max_servers, checked at each spawn).
    c.JupyterHub.allow_named_servers = True
    # The scope a site's roles give to see everyone's activity history (operators; admins have
    # it through admin:users). Defined here so roles in the rest of the file can name it.
    c.JupyterHub.custom_scopes.update({READ_ALL_SCOPE: {"description": READ_ALL_DESCRIPTION}})
    install_handlers()
    from gateway.hub import metrics

    metrics.install()  # hpcgate_* next to JupyterHub's own on /hub/metrics
    c.LDAPAuthenticator.login_observer = metrics.observe_login
    watch_children_by_pidfd()


def watch_children_by_pidfd() -> bool:
    """Python 3.11's asyncio waits for each child process (every sudo, sbatch, squeue the hub runs)
    in a thread of its own, and starting that thread waits until the thread runs: on a busy hub
    host, a storm of spawns held the event loop there for milliseconds each time
    (benchmarks.spawn_storm). A pidfd in the loop's own poll costs no thread; Python 3.12 makes it
    the default where the kernel has it (Linux 5.3). Takes effect in the hub's running loop (the
    configuration file is read inside it); True when it is in use."""
    import asyncio
    import os
    import sys
    import warnings

    if sys.version_info >= (3, 12):
        return True
    try:
        loop = asyncio.get_running_loop()
        os.close(os.pidfd_open(os.getpid()))
    except (RuntimeError, AttributeError, OSError):  # no loop; no pidfds in this kernel
        return False
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(loop)  # 3.11's watcher serves one loop: the hub's only one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_child_watcher(watcher)
    return True
