"""A researcher's browser session without a browser: cookies, _xsrf, the login and spawn forms."""

from __future__ import annotations

import http.cookiejar
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from html import unescape


class Portal:
    """One user's cookie session against the hub's HTML pages, as a browser would drive them."""

    def __init__(self, base_url: str):
        self.base = base_url.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _xsrf(self) -> str:
        return next((c.value for c in self.jar if c.name == "_xsrf"), "")

    def request(self, path: str, form: dict[str, str] | None = None,
                timeout: float = 30) -> tuple[int, str, str]:
        """(status, final URL after redirects, body) of a GET, or a POST of `form` with _xsrf."""
        data = None
        if form is not None:
            data = urllib.parse.urlencode({**form, "_xsrf": self._xsrf()}).encode()
        try:
            with self.opener.open(self.base + path, data, timeout=timeout) as resp:
                return resp.status, resp.url, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.url, err.read().decode()

    def login(self, user: str, password: str) -> tuple[int, str, str]:
        self.request("/hub/login")  # sets the _xsrf cookie the form must echo
        return self.request("/hub/login", {"username": user, "password": password})

    @staticmethod
    def login_error(body: str) -> str:
        found = re.search(r'class="login_error"[^>]*>\s*([^<]*?)\s*<', body)
        return unescape(found.group(1)) if found else ""

    def form_partitions(self) -> dict[str, str]:
        """Partition name -> the label the spawn form shows for it."""
        _, _, body = self.request("/hub/spawn")
        return {unescape(value): unescape(label) for value, label in
                re.findall(r'<option value="([^"]+)"[^>]*>([^<]*)</option>', body)}

    def wait_for_lab(self, user: str, timeout: float = 120) -> str:
        """Follow /user/NAME/lab (through the spawn-pending page and OAuth) until JupyterLab answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, url, _ = self.request(f"/user/{user}/lab", timeout=10)
            path = urllib.parse.urlsplit(url).path
            if status == 200 and path == f"/user/{user}/lab":
                return path
            time.sleep(0.5)
        raise AssertionError(f"JupyterLab for {user} did not answer within {timeout} s")
