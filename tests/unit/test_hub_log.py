"""hpcgate's loggers print through the hub's handlers, in the hub's format, once."""

from __future__ import annotations

import io
import logging

from auth.hublog import follow_hub_log


def test_hpcgate_lines_take_the_hubs_format_and_level() -> None:
    out = io.StringIO()
    hub = logging.getLogger("test-hub-app")
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("[%(levelname)1.1s %(name)s] %(message)s"))
    hub.handlers, hub.propagate = [handler], False
    hub.setLevel(logging.INFO)
    ours = logging.getLogger("hpcgate")
    saved = (list(ours.handlers), ours.level, ours.propagate)
    try:
        follow_hub_log(logging.LoggerAdapter(hub, {}))
        follow_hub_log(hub)  # again: still one handler, one copy of each line
        logging.getLogger("hpcgate.watcher").warning("Scheduler query failed (%d in a row)", 3)
        logging.getLogger("hpcgate.watcher").debug("not at INFO")
    finally:
        ours.handlers, ours.level, ours.propagate = saved
    assert out.getvalue() == "[W hpcgate.watcher] Scheduler query failed (3 in a row)\n"
