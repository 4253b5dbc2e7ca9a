"""The server's contents manager: jupyter_server's own, where a path the user may not look at is a
403, never a 500.

A user can plant a symlink in their tree that points into a directory they cannot enter (another
group's depot). jupyter_server then calls stat() below it, the kernel says EACCES, and the
PermissionError escaped as a 500 with a traceback. The refusal was right; it only needs to be
said as one. A link whose target is gone (FileNotFoundError from the same stat) is a 404.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from tornado import web


def _refused_in_words(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except PermissionError as err:
            raise web.HTTPError(403, "Permission denied: you may not open this path") from err
        except FileNotFoundError as err:  # a dangling link: lstat() saw it, stat() did not
            raise web.HTTPError(404, "No such file or directory") from err
    return wrapper


class ContentsManager(AsyncLargeFileManager):
    """AsyncLargeFileManager (jupyter_server's default), with permission errors as 403 and
    vanished link targets as 404."""

    get = _refused_in_words(AsyncLargeFileManager.get)
    save = _refused_in_words(AsyncLargeFileManager.save)
    delete_file = _refused_in_words(AsyncLargeFileManager.delete_file)
    rename_file = _refused_in_words(AsyncLargeFileManager.rename_file)
    dir_exists = _refused_in_words(AsyncLargeFileManager.dir_exists)
    file_exists = _refused_in_words(AsyncLargeFileManager.file_exists)
    exists = _refused_in_words(AsyncLargeFileManager.exists)
    is_hidden = _refused_in_words(AsyncLargeFileManager.is_hidden)
