"""The single-user server's /files/ handler for large recordings.

jupyter_server serves /files/ with tornado's StaticFileHandler (AuthenticatedFileHandler): Range
requests get 206 and `Accept-Ranges: bytes`, the file is read in 64 KiB chunks (memory stays flat
for any size), and paths are confined to the server's root directory. Two things are added here:

- audio types that a node without /etc/mime.types would not know (`.flac` is missing from some
  Python versions' built-in table), so an HTML audio element gets the right Content-Type;
- a download counts as activity: JupyterHub's idle culler sees the server's last activity, which
  jupyter_server computes from settings whose names end in `_last_activity`. A long stream refreshes
  it every few seconds while it runs.

The launcher selects it with `--ContentsManager.files_handler_class=gateway.files.TrackedFileHandler`.
"""

from __future__ import annotations

import mimetypes
import time
from typing import Any

from jupyter_server._tz import utcnow
from jupyter_server.base.handlers import AuthenticatedFileHandler

AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg",
               ".ogg": "audio/ogg", ".opus": "audio/ogg", ".m4a": "audio/mp4"}
ACTIVITY_KEY = "hpcgate_files_last_activity"
HANDLER = "gateway.files.TrackedFileHandler"


def register_audio_types() -> None:
    for ext, kind in AUDIO_TYPES.items():
        mimetypes.add_type(kind, ext)


register_audio_types()


class TrackedFileHandler(AuthenticatedFileHandler):
    """AuthenticatedFileHandler whose transfers count as server activity."""

    activity_every = 5.0  # seconds between refreshes of the activity time during one transfer
    _touched = float("-inf")

    def _touch(self) -> None:
        now = time.monotonic()
        if now - self._touched >= self.activity_every:
            self._touched = now
            self.settings[ACTIVITY_KEY] = utcnow()

    def set_headers(self) -> None:
        super().set_headers()
        self._touch()

    def flush(self, include_footers: bool = False) -> Any:
        self._touch()
        return super().flush(include_footers)
