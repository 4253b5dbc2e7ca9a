"""The `depots/` folder in each user's server: one symlink per depot their groups allow.

The spawner computes the list (`launch_entry`, on the hub, from the policy and the user's groups)
and puts it in the launch file; the launcher, inside the job and as the user, makes the links
(`prepare_server` -> `make_links`) before the server starts, and lets the server's /files/ follow
them. Links, not copies: the data stays in the depot and the filesystem keeps enforcing the
depot's permissions, also for terminals and kernels.

`depots/` is hpcgate's: symlinks there that the policy no longer gives are removed at every start.
Files or folders a user put there are never touched.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway.depots.access import depots_for
from gateway.policy.model import SitePolicy

DEPOTS_DIR = "depots"


def launch_entry(policy: SitePolicy, groups: Iterable[str], root: str) -> dict[str, Any]:
    """What the launcher needs: the folder to manage and {link name: depot path}.

    `root` is the server's root directory (the user's home, or the notebook directory, which may
    start with `~`: the launcher expands it as the user).
    """
    return {"dir": f"{root.rstrip('/')}/{DEPOTS_DIR}",
            "links": {d.name: d.path for d in depots_for(policy, groups)}}


async def spawner_launch_entry(spawner: Any, user: str, home: str) -> dict[str, Any] | None:
    """The launch file's `depots` entry for one spawn (None without a site policy: no links)."""
    policy = spawner.site_policy()
    if policy is None:
        return None
    root = spawner.format_string(spawner.notebook_dir) if spawner.notebook_dir else home
    return launch_entry(policy, await spawner.user_groups(user), root)


FILES_PARAMS = "files_handler_params"
CONFIG_NAME = "jupyter_server_config.json"


def prepare_server(entry: dict[str, Any], state_dir: str | Path, log: Any = print) -> None:
    """In the job, before the server starts: make the links, and let /files/ serve through them.

    Since tornado 6.5.9, /files/ (downloads, audio players, Range requests) refuses symlinks whose
    target leaves the server's root. The contents API follows them anyway, so this adds no reach:
    /files/ may resolve into the root and into exactly the linked depots, and the filesystem still
    decides who reads what. A list of directories needs the server's configuration in a file
    (traitlets' command line gives dict values as strings): `state_dir/jupyter-config/`, put on
    JUPYTER_CONFIG_PATH: below the user's own ~/.jupyter and the command line in precedence,
    above the site's /etc/jupyter.
    """
    outcome = make_links(entry, log)
    targets = sorted({str(v) for k, v in (entry.get("links") or {}).items()
                      if outcome.get(k) in ("linked", "kept")})
    if not targets or not _tornado_takes_a_list():
        return
    root = os.path.dirname(os.path.expanduser(str(entry.get("dir") or f"~/{DEPOTS_DIR}")))
    config = {"FileContentsManager": {FILES_PARAMS: {
        "path": root, "allowed_symlink_directory": [root, *targets]}}}
    folder = Path(state_dir) / "jupyter-config"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n")
    except OSError as err:
        log(f"hpcgate: /files/ will not follow depot links: {folder}: {err.strerror or err}")
        return
    search = [str(folder), *filter(None, os.environ.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep))]
    os.environ["JUPYTER_CONFIG_PATH"] = os.pathsep.join(dict.fromkeys(search))
    check_hidden_on_the_link()


def check_hidden_on_the_link() -> None:
    """Make /files/ judge hidden files on the path as requested, not on the link's target.

    jupyter_server's AuthenticatedFileHandler asks `is_hidden(path, root)` of the path tornado
    returns, which since tornado 6.5.9 is the resolved target: outside the root for a depot link,
    so every download through `depots/` became a 500 (ValueError: not a subdirectory). The same
    check on the requested path (which tornado has confined to the root) keeps hidden files
    hidden. Patched in the job's own process, before the server is built, as the launcher does
    for its socket.
    """
    from jupyter_core.paths import is_hidden
    from jupyter_server.base.handlers import AuthenticatedFileHandler
    from tornado import web

    if getattr(AuthenticatedFileHandler, "_hpcgate_link_aware", False):
        return

    def validate_absolute_path(self: Any, root: str, absolute_path: str) -> str | None:
        resolved = web.StaticFileHandler.validate_absolute_path(self, root, absolute_path)
        if resolved is None:
            return None
        if not self.contents_manager.allow_hidden and is_hidden(absolute_path,
                                                                os.path.abspath(root)):
            self.log.info("Refusing to serve hidden file, via 404 Error")
            raise web.HTTPError(404)
        return resolved

    AuthenticatedFileHandler.validate_absolute_path = validate_absolute_path  # type: ignore[method-assign]
    AuthenticatedFileHandler._hpcgate_link_aware = True  # type: ignore[attr-defined]


def _tornado_takes_a_list() -> bool:
    """tornado >= 6.5.10 (a list of allowed directories); older ones follow symlinks anyway,
    except 6.5.9, which takes one directory only (then /files/ stays confined to the root)."""
    import tornado

    return tornado.version_info >= (6, 5, 10, 0)


def make_links(entry: dict[str, Any], log: Any = print) -> dict[str, str]:
    """Make `entry["dir"]` hold exactly the wanted links; return what each name ended as.

    Never raises: a server without its depot links is better than no server. Each problem is one
    line in the job's log.
    """
    wanted: dict[str, str] = {str(k): str(v) for k, v in (entry.get("links") or {}).items()}
    folder = os.path.expanduser(str(entry.get("dir") or f"~/{DEPOTS_DIR}"))
    outcome: dict[str, str] = {}
    try:
        fd = _open_folder(folder, create=bool(wanted))
    except OSError as err:
        log(f"hpcgate: depot links not made: {folder}: {err.strerror or err}")
        return outcome
    if fd is None:
        return outcome
    try:
        for name in os.listdir(fd):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISLNK(st.st_mode):
                continue  # the user's own file or folder: never removed
            if name in wanted and os.readlink(name, dir_fd=fd) == wanted[name]:
                outcome[name] = "kept"
                continue
            os.unlink(name, dir_fd=fd)
            if name not in wanted:
                outcome[name] = "removed"
        for name, target in wanted.items():
            if outcome.get(name) == "kept":
                continue
            if not _safe_name(name):
                log(f"hpcgate: depot link {name!r} skipped: not a plain file name")
                outcome[name] = "skipped"
                continue
            try:
                os.symlink(target, name, dir_fd=fd)
                outcome[name] = "linked"
            except FileExistsError:
                log(f"hpcgate: depot link {folder}/{name} not made: something else has that name")
                outcome[name] = "skipped"
        if not wanted and not os.listdir(fd):
            os.rmdir(folder)  # the user has no depots any more: leave no empty folder behind
    except OSError as err:
        log(f"hpcgate: depot links in {folder} incomplete: {err.strerror or err}")
    finally:
        os.close(fd)
    return outcome


def _safe_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def _open_folder(folder: str, create: bool) -> int | None:
    """An fd on the folder, which must be a real directory (a symlink there is not followed)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        return os.open(folder, flags)
    except FileNotFoundError:
        if not create:
            return None
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(err.errno, "exists and is not a folder; left alone") from None
        raise
    # The folder's own mode guards nothing: each depot's permissions do.
    try:
        os.mkdir(folder, 0o755)
    except FileExistsError:
        pass
    return os.open(folder, flags)
