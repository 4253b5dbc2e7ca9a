"""The single-user server's /files/ handler for large recordings.

jupyter_server serves /files/ with tornado's StaticFileHandler (AuthenticatedFileHandler): Range
requests get 206 and `Accept-Ranges: bytes`, the file is read in 64 KiB chunks (memory stays flat
for any size), and paths are confined to the server's root directory. Two things are added here:

- audio types that a node without /etc/mime.types would not know (`.flac` is missing from some
  Python versions' built-in table), so an HTML audio element gets the right Content-Type;
- a download counts as activity: JupyterHub's idle culler sees the server's last activity, which
  jupyter_server computes from settings whose names end in `_last_activity`. A long stream refreshes
  it while it runs (checked after every 8 MiB sent, written at most once per 5 s);
- a large transfer is recorded in the activity history (kind `download`: path and bytes sent),
  when the activity recorder (gateway.job.activity) runs in the server; it decides what is large;
- a large body (from `sendfile_min`, 1 MiB) leaves by sendfile(2): the kernel moves page-cache
  pages to the socket, where tornado would read each 64 KiB chunk into Python and write it out
  again. The server's CPU per GiB drops fivefold (0.52 -> 0.10 s measured), and on a reverse tunnel
  that CPU is shared with ssh, sshd and the proxy. The file is opened before the headers go out
  (a file the server cannot read gets 403, not an empty 200). Such a response takes the
  connection with it (`Connection: close`):
  a browser seeking in a recording asks for `bytes=N-` and drops the connection at the next seek
  anyway. Small ranges, HEAD, TLS and compressed responses keep tornado's own path.

The launcher selects it with `--ContentsManager.files_handler_class=gateway.job.files.TrackedFileHandler`.
"""

from __future__ import annotations

import asyncio
import mimetypes
import socket
import time
from collections.abc import Awaitable, Iterable
from typing import Any, BinaryIO

from jupyter_server._tz import utcnow
from jupyter_server.base.handlers import AuthenticatedFileHandler
from tornado import iostream, web

AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg",
               ".ogg": "audio/ogg", ".opus": "audio/ogg", ".m4a": "audio/mp4"}
ACTIVITY_KEY = "hpcgate_files_last_activity"
DOWNLOAD_LISTENER = "hpcgate_activity_download"
"""settings key: f(path, bytes_sent, range_start, file_bytes), called once per transfer's end."""
HANDLER = "gateway.job.files.TrackedFileHandler"


def register_audio_types() -> None:
    for ext, kind in AUDIO_TYPES.items():
        mimetypes.add_type(kind, ext)


register_audio_types()


class TrackedFileHandler(AuthenticatedFileHandler):
    """AuthenticatedFileHandler whose transfers count as server activity and whose large bodies
    go out by sendfile(2)."""

    activity_every = 5.0  # seconds between refreshes of the activity time during one transfer
    sendfile_min = 1 << 20  # bodies at least this long go out by sendfile
    sendfile_slice = 8 << 20  # bytes per sendfile call: activity is refreshed between slices
    _touched = float("-inf")
    _sendfile: tuple[str, int, int] | None = None  # (path, offset, length) of the pending body
    _sent: int | None = None  # body bytes sent so far; None: no body (HEAD, 304, an error)
    _range_start = 0

    def _touch(self) -> None:
        now = time.monotonic()
        if now - self._touched >= self.activity_every:
            self._touched = now
            self.settings[ACTIVITY_KEY] = utcnow()

    def set_headers(self) -> None:
        super().set_headers()
        self._touch()

    def get(self, path: str, **kwargs: Any) -> Awaitable[None]:  # type: ignore[override]
        # StaticFileHandler.get checks the path and the Range, sets the headers, then asks
        # self.get_content for the body: this instance answers with its own.
        self.get_content = self._body  # type: ignore[method-assign]
        return super().get(path, **kwargs)

    def _body(self, abspath: str, start: int | None = None,
              end: int | None = None) -> Iterable[bytes]:
        offset = start or 0
        length = (self.get_content_size() if end is None else end) - offset
        self._sent, self._range_start = 0, offset
        if length >= self.sendfile_min and self._plain_connection():
            self._sendfile = (abspath, offset, length)
            return [b""]  # one empty chunk: the flush() after it sends the file
        return self._counted(type(self).get_content(abspath, start, end))

    def _counted(self, chunks: Iterable[bytes]) -> Iterable[bytes]:
        for chunk in chunks:
            yield chunk
            self._sent = (self._sent or 0) + len(chunk)  # counted once tornado took it

    def _report_download(self) -> None:
        listener = self.settings.get(DOWNLOAD_LISTENER)
        sent, self._sent = self._sent, None  # once per transfer
        if listener is None or sent is None:
            return
        try:
            listener(self.path, sent, self._range_start, self.get_content_size())
        except Exception:  # the history must never break a download
            self.log.warning("activity: the download of %s was not recorded", self.path,
                             exc_info=True)

    def on_finish(self) -> None:
        self._report_download()
        super().on_finish()

    def _plain_connection(self) -> bool:
        """True when the body can bypass tornado: HTTP/1.1 on a plain socket, no transforms
        (gzip) that would rewrite it."""
        stream = getattr(self.request.connection, "stream", None)
        return (type(stream) is iostream.IOStream and not self.application.transforms
                and self.request.version == "HTTP/1.1")

    def flush(self, include_footers: bool = False) -> Any:
        self._touch()
        if self._sendfile is not None:
            return asyncio.ensure_future(self._send_file())
        return super().flush(include_footers)

    async def _send_file(self) -> None:
        """Send the headers through tornado, then the body by sendfile on the bare socket; the
        connection closes after it (tornado's HTTP handling ends at detach)."""
        assert self._sendfile is not None
        path, offset, length = self._sendfile
        self._sendfile = None
        try:  # before the headers, so that a file that cannot be read gets an error page
            f = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError as err:
            raise web.HTTPError(404) from err
        except PermissionError as err:
            raise web.HTTPError(403, "the server's account cannot read %s", path) from err
        with f:
            self.set_header("Connection", "close")
            await super().flush()  # StreamClosedError here ends StaticFileHandler.get quietly
            stream = self.detach()
            if stream.socket is None:  # the client hung up while the headers went out
                self.application.log_request(self)
                return
            # A socket of our own: tornado still watches its copy and would close it under
            # sendfile when the client hangs up, so its copy is closed now and ours ends the
            # connection.
            sock = stream.socket.dup()
            stream.close()
            sock.setblocking(False)
            await self._send_body(sock, f, path, offset, length)

    async def _send_body(self, sock: socket.socket, f: BinaryIO, path: str, offset: int,
                         length: int) -> None:
        loop = asyncio.get_running_loop()
        sent = 0
        try:
            while sent < length:
                f.seek(offset + sent)  # asyncio leaves the file's position after what went out
                n = await loop.sock_sendfile(sock, f, offset + sent,
                                             min(self.sendfile_slice, length - sent))
                if n == 0:  # the file shrank under us: the client sees a short body
                    self.log.warning("%s ended %d bytes short of its size", path, length - sent)
                    break
                sent += n
                self._touch()
        except (BrokenPipeError, ConnectionResetError) as err:
            sent = max(sent, f.tell() - offset)  # what the interrupted slice sent
            # the client went away (seeked elsewhere, closed the tab)
            self.log.debug("sendfile of %s stopped after %d of %d bytes: %s", path, sent,
                           length, err)
        except OSError as err:  # a read error of the file itself (a network filesystem...)
            sent = max(sent, f.tell() - offset)
            self.log.warning("sendfile of %s stopped after %d of %d bytes: %s", path, sent,
                             length, err)
        finally:
            sock.close()
            self._sent = sent
            self._report_download()
            self.application.log_request(self)
