"""JupyterHub routes as nginx configuration: pure functions, no I/O.

Everything that reaches the configuration passes through one of the validators below: a routespec
or a target that could break out of an nginx directive (quotes, braces, semicolons, newlines,
`$` variables) is refused or written as a quoted, escaped string. JupyterHub restricts user and
server names, but the proxy does not rely on it.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

GENERATION_PATH = "/_hpcgate_generation"
ROUTES_PATH = "/_hpcgate_routes"

_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")
# Control characters (newlines and tabs among them) have no business in a URL path: refused.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RouteError(ValueError):
    """A routespec or target the proxy refuses to write into nginx's configuration."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # as nginx writes it: a name, an IPv4 address or a bracketed IPv6 address
    port: int
    path: str  # "" or a path starting with "/"

    @property
    def upstream(self) -> str:
        """A name for the upstream block: stable, and safe whatever the target looked like."""
        digest = hashlib.sha256(f"{self.scheme}://{self.host}:{self.port}".encode()).hexdigest()
        # 16 to 47 hex digits: nginx finds an upstream by comparing its name with every one
        # defined so far, once per `upstream` and per `proxy_pass`, and only names of the same
        # length get to strncasecmp (with 1,000 routes that was 27% of a reload's parse).
        return f"hpcgate_{digest[:16 + int(digest[16:18], 16) % 32]}"


@functools.lru_cache(maxsize=65536)  # pure; a reload re-renders every route (12 of 15 ms at 1,000)
def parse_target(target: str) -> Target:
    """`http[s]://host[:port][/path]`, with a host that is an IP address or a DNS name."""
    if not isinstance(target, str) or _CONTROL.search(target) or any(c in target for c in ' "\'\\;{}$#'):
        raise RouteError(f"refusing proxy target {target!r}: not a plain http(s) URL")
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or parts.query or parts.fragment or parts.username \
            or parts.password:
        raise RouteError(f"refusing proxy target {target!r}: not a plain http(s) URL")
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:
        raise RouteError(f"refusing proxy target {target!r}: {err}") from None
    try:
        address = ipaddress.ip_address(host)
        host = f"[{address}]" if address.version == 6 else str(address)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise RouteError(f"refusing proxy target {target!r}: bad host {host!r}") from None
    path = parts.path.rstrip("/")
    if path and not re.fullmatch(r"(/[A-Za-z0-9._~!*'()@+,=:%-]+)+", path):
        raise RouteError(f"refusing proxy target {target!r}: bad path {path!r}")
    return Target(parts.scheme, host, port, path)


def needs_resolving(target: Target) -> bool:
    """A DNS name: nginx resolves it when it loads the configuration, and may fail there."""
    return not (target.host.startswith("[") or re.fullmatch(r"[0-9.]+", target.host))


@dataclass(frozen=True)
class Spec:
    host: str  # "" for a route on every host
    path: str  # decoded (nginx matches locations against the decoded URI), starting and ending with "/"


@functools.lru_cache(maxsize=65536)
def parse_routespec(routespec: str) -> Spec:
    """`[host]/path/` as JupyterHub writes it (URL-escaped), split and decoded."""
    if not isinstance(routespec, str) or not routespec.endswith("/"):
        raise RouteError(f"refusing routespec {routespec!r}: it must end with '/'")
    host, slash, rest = routespec.partition("/")
    if host and not _HOSTNAME.fullmatch(host):
        raise RouteError(f"refusing routespec {routespec!r}: bad host {host!r}")
    path = unquote(slash + rest, errors="strict")
    if _CONTROL.search(routespec) or _CONTROL.search(path):
        raise RouteError(f"refusing routespec {routespec!r}: control characters")
    return Spec(host.lower(), path)


def quote(value: str) -> str:
    """An nginx string literal: double-quoted, with the two characters nginx unescapes escaped.
    Inside quotes nginx takes braces, semicolons, '#' and spaces literally; `$` is only expanded
    in directives that take variables, and none of ours gets a quoted user value."""
    if _CONTROL.search(value):
        raise RouteError(f"refusing {value!r} in the nginx configuration: control characters")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def order(routespecs: list[str]) -> list[str]:
    """Most specific first (longest path), host routes before host-less ones; stable otherwise.
    nginx picks the longest prefix itself: the order only makes the configuration readable."""
    return sorted(routespecs, key=lambda r: (parse_routespec(r).host == "", -len(parse_routespec(r).path), r))


@dataclass(frozen=True)
class Settings:
    """What the rendered configuration needs besides the routes."""
    listen: tuple[str, ...]  # "127.0.0.1:8000", "[::1]:8000", "*:8000"
    status_listen: str  # "unix:/path/status.sock" or "127.0.0.1:PORT"
    generation: int
    error_target: str = ""  # the hub's /hub/error URL: its error page when a server is unreachable
    timeout: int = 86400  # seconds: a kernel's websocket may be quiet for hours
    keepalive: int = 32
    tls: tuple[str, str] | None = None  # (certificate, key) files: TLS and HTTP/2 towards browsers
    # The directory of hpcgate_routes.lua: the routes live in nginx's shared memory, changed
    # without a reload (lua-nginx-module), and the configuration holds none. "": one location
    # per route, a reload per change.
    lua_dir: str = ""
    table_size_mb: int = 16  # the shared dict holding the route table
    table_file: str = ""  # the table a freshly started nginx loads before the hub sends it
    dynamic_keepalive: int = 256  # idle upstream connections per worker, all targets together


# Headers of the error page's request to the hub (proxy_set_header in a location replaces every
# inherited one): the client's address as everywhere, no upgrade, body, cookies or credentials.
HUB_DOWN_PAGE = (
    "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>The portal is not answering"
    "</title></head><body><h1>The portal is not answering right now</h1><p>It may be "
    "restarting. Your running servers and their jobs are not affected. Try again in a minute."
    "</p></body></html>")
"""What the proxy answers (503) when neither a server nor the hub answers."""
_ERROR_PAGE_HEADERS = (
    "proxy_set_header Host $http_host;",
    "proxy_set_header Connection \"\";",
    "proxy_set_header Content-Length \"\";  # the body is not passed on: nor its length",
    "proxy_set_header Transfer-Encoding \"\";",
    "proxy_set_header X-Real-IP $remote_addr;",
    "proxy_set_header X-Forwarded-For $remote_addr;",
    "proxy_set_header X-Forwarded-Proto $scheme;",
)


# A path with a "." or ".." segment, plain or percent-encoded, a decoded "%2f" counting as "/"
# (nginx decodes both before it resolves dot segments). nginx matches locations on the resolved
# path but passes the client's own URI on, so "/user/bob/..%2falice/x" (one segment to a
# browser, which sends bob's cookies for /user/bob/ along) would reach alice's server, and a path
# leaving /user/carol/ would reach the hub. CHP routes on the path as sent; here such a request
# is refused at the edge (400), before any route. Browsers resolve plain and encoded dot segments
# themselves and never send them; names like "...", ".x" or "a..b" pass.
DOT_SEGMENT = r"^[^?]*(/|%2f)([.]|%2e)([.]|%2e)?(/|%2f|[?]|$)"


def _proxy_pass(target: Target) -> str:
    # No URI part: nginx passes the client's URI unchanged, as CHP does. A target path is
    # prepended to it (CHP's prependPath).
    if target.path:
        return f"proxy_pass {target.scheme}://{target.upstream}{target.path}$request_uri;"
    return f"proxy_pass {target.scheme}://{target.upstream};"


def _locations(routes: list[tuple[Spec, Target]], indent: str) -> list[str]:
    lines = []
    seen: set[str] = set()
    for spec, target in routes:
        # Two routespecs nginx would read as one location (e.g. /a/ and /a//, both giving
        # `= /a`) would make it refuse the whole configuration: refused here, by name.
        for key in (spec.path, "=" + spec.path.rstrip("/")):
            if key in seen:
                raise RouteError(f"refusing routespec for {spec.host}{spec.path!r}: another "
                                 f"route already has the location {key!r}")
            seen.add(key)
        lines.append(f"{indent}location {quote(spec.path)} {{ {_proxy_pass(target)} }}")
        if spec.path != "/":
            # /user/alice (no slash) belongs to /user/alice/ too, as in CHP's segment matching.
            lines.append(f"{indent}location = {quote(spec.path.rstrip('/'))} {{ {_proxy_pass(target)} }}")
    return lines


def table_line(spec: Spec, target: Target, address: str) -> str:
    """A route as hpcgate_routes.lua's update() reads it: tab-separated, key first.

    `address` is the target host's IP address (the balancer takes no names). Nothing here can
    hold a tab or a newline: parse_routespec and parse_target refuse control characters."""
    ip = ipaddress.ip_address(address.strip("[]"))  # refuses anything but an address
    peer = f"[{ip}]" if ip.version == 6 else str(ip)  # as the balancer parses it (ngx_parse_url)
    return "\t".join(("set", spec.host + spec.path, target.scheme, peer, str(target.port),
                      target.path))


def _listen(address: str, default: bool, tls: bool) -> str:
    return f"listen {address}{' default_server' if default else ''}{' ssl http2' if tls else ''};"


def render_http(routes: Mapping[str, Mapping[str, Any]], settings: Settings) -> str:
    """The `http {}` context's content: upstreams, the public servers, the status server.

    `routes` maps routespecs to {"target": ...}; a route that does not validate raises RouteError.
    """
    parsed: dict[str, tuple[Spec, Target]] = {
        r: (parse_routespec(r), parse_target(routes[r]["target"])) for r in order(list(routes))}
    out = [f"# Generated by hpcgate-nginx (gateway/hub/proxy): generation {settings.generation}.",
           "# Do not edit: the hub rewrites this file at each route change." if not settings.lua_dir
           else "# Do not edit. Routes are not here: the hub keeps them in nginx's route table.",
           "map $http_upgrade $hpcgate_connection_upgrade { default upgrade; \"\" \"\"; }", ""]
    common = [
        "server_tokens off;",
        f'if ($request_uri ~* "{DOT_SEGMENT}") {{ return 400 "Dot segments are refused in paths.\\n"; }}',
        "merge_slashes off;  # match locations on the path as sent, like CHP",
        "client_max_body_size 0;",
        "large_client_header_buffers 8 32k;",
        "proxy_http_version 1.1;",
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        # The one buffer an unbuffered response streams through (and each direction of a
        # websocket): nginx reads and writes this much per syscall. A 1 GiB download cost nginx
        # 0.70-0.84 s of CPU with 64k, 0.49-0.60 with 256k, 0.47-0.49 with 1m; the pages of a
        # buffer are only touched as far as a read fills them, so a quiet websocket stays small.
        "proxy_buffer_size 256k;",
        "proxy_buffers 4 256k;",
        "proxy_redirect off;",
        f"proxy_read_timeout {settings.timeout}s;",
        f"proxy_send_timeout {settings.timeout}s;",
        "proxy_connect_timeout 20s;",
        "proxy_set_header Host $http_host;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $hpcgate_connection_upgrade;",
        "# The peer's address, overwriting whatever the client sent (the hub trusts X-Real-Ip).",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Port $server_port;",
    ]
    upstreams = {t.upstream: t for _, t in parsed.values()}
    error: list[str] = []
    if settings.error_target:
        hub = parse_target(settings.error_target)
        upstreams.setdefault(hub.upstream, hub)
        # The hub's own page when a server does not answer, as CHP's --error-target gives: a
        # plain GET of /hub/error/503 (which answers 200), sent to the client as a 503 (as CHP
        # does), so that a client polling until 200 never takes the page for its server's answer.
        # recursive: nginx decides at the first error whether a second may redirect again.
        error = ["recursive_error_pages on;",
                 "error_page 502 504 =503 @hpcgate_unreachable;",
                 "location @hpcgate_unreachable {",
                 f"    rewrite ^ {hub.path}/503 break;",
                 "    proxy_method GET;",
                 "    proxy_pass_request_body off;",
                 "    proxy_pass_request_headers off;",
                 # The hub answers this cookie-less request as for a stranger, with a new _xsrf
                 # cookie: passed on, it replaced the logged-in user's, and every API call of their
                 # open hub pages was refused (403) until they reloaded.
                 "    proxy_hide_header Set-Cookie;",
                 *[f"    {line}" for line in _ERROR_PAGE_HEADERS],
                 # The hub itself not answering (restarting, killed): a sentence, not nginx's
                 # bare 502 page.
                 "    error_page 502 504 = @hpcgate_hub_down;",
                 f"    proxy_pass {hub.scheme}://{hub.upstream};",
                 "}",
                 "location @hpcgate_hub_down {",
                 "    default_type text/html;",
                 "    add_header Retry-After 10 always;",
                 "    add_header Cache-Control no-store always;",
                 f"    return 503 {quote(HUB_DOWN_PAGE)};",
                 "}"]
    for name, t in sorted(upstreams.items()):
        out.append(f"upstream {name} {{ server {t.host}:{t.port}; keepalive {settings.keepalive}; }}")
    out.append("")
    if settings.lua_dir:
        if parsed:
            raise ValueError("with lua_dir, routes go to the route table, not the configuration")
        return "\n".join(out + _dynamic(settings, common + error))
    hosts = sorted({spec.host for spec, _ in parsed.values() if spec.host})
    default_routes = [(s, t) for s, t in parsed.values() if not s.host]
    for host in ["", *hosts]:
        out.append("server {")
        out += [f"    {_listen(a, default=not host, tls=bool(settings.tls))}" for a in settings.listen]
        out.append(f"    server_name {quote(host) if host else '_'};")
        if settings.tls:
            out += [f"    ssl_certificate {quote(settings.tls[0])};",
                    f"    ssl_certificate_key {quote(settings.tls[1])};"]
        out += [f"    {line}" for line in common + error]
        mine = [(s, t) for s, t in parsed.values() if s.host == host]
        if host:  # a host without a route of its own for "/" falls back to the default one
            paths = {s.path for s, _ in mine}
            mine += [(s, t) for s, t in default_routes if s.path == "/" and "/" not in paths]
        out += _locations(mine, "    ")
        if not any(s.path == "/" for s, _ in mine):
            out.append('    location / { return 404 "No route for this URL.\\n"; }')
        out.append("}")
    out += ["server {",
            f"    listen {settings.status_listen};",
            "    access_log off;",
            f"    location = {GENERATION_PATH} {{",
            f'        default_type text/plain; return 200 "{settings.generation}\\n";',
            "    }",
            "    location / { return 404; }",
            "}", ""]
    return "\n".join(out)


def _dynamic(settings: Settings, common: list[str]) -> list[str]:
    """The public server and the status listener when the routes live in the Lua route table."""
    tls = [f"ssl_certificate {quote(settings.tls[0])};",
           f"ssl_certificate_key {quote(settings.tls[1])};"] if settings.tls else []
    if not settings.status_listen.startswith("unix:"):
        # Route changes arrive there: only a socket in a directory of the hub's own is safe.
        raise RouteError("the route table is changed through the status listener: it must be a "
                         f"unix socket, not {settings.status_listen!r}")
    return [
        f"lua_package_path {quote(settings.lua_dir + '/?.lua;;')};",
        f"lua_shared_dict hpcgate_routes {settings.table_size_mb}m;",
        # In the master: checks the module, and a fresh nginx starts with the hub's table.
        f'init_by_lua_block {{ require("hpcgate_routes").load({_lua_string(settings.table_file)}) }}',
        "upstream hpcgate_routes {",
        "    server 0.0.0.1;  # a placeholder: balance() sets the peer access() chose",
        '    balancer_by_lua_block { require("hpcgate_routes").balance() }',
        f"    keepalive {settings.dynamic_keepalive};  # after the balancer: it wraps it",
        "}",
        "",
        "server {",
        *[f"    {_listen(a, default=True, tls=bool(settings.tls))}" for a in settings.listen],
        "    server_name _;",
        *[f"    {line}" for line in tls + common],
        "    location / {",
        '        set $hpcgate_scheme "";',
        '        set $hpcgate_uri "";',
        '        access_by_lua_block { require("hpcgate_routes").access() }',
        "        proxy_pass $hpcgate_scheme://hpcgate_routes$hpcgate_uri;",
        "    }",
        '    location @hpcgate_no_route { return 404 "No route for this URL.\\n"; }',
        "}",
        "server {",
        f"    listen {settings.status_listen};",
        "    access_log off;",
        f"    location = {GENERATION_PATH} {{",
        '        content_by_lua_block { require("hpcgate_routes").generation() }',
        "    }",
        f"    location = {ROUTES_PATH} {{",
        "        allow unix:;",
        "        deny all;",
        "        client_max_body_size 64m;",
        "        client_body_buffer_size 64m;  # the whole table in memory, never in a file",
        '        content_by_lua_block { require("hpcgate_routes").update() }',
        "    }",
        "    location / { return 404; }",
        "}", ""]


def _lua_string(value: str) -> str:
    """A Lua string literal of `value`, every byte a decimal escape: nothing in it can end the
    string or the block around it."""
    return '"' + "".join(f"\\{b:03d}" for b in value.encode()) + '"'


def render_main(http: str, state_dir: str, pid_file: str, error_log: str, worker_processes: str,
                access_log: str = "", modules: tuple[str, ...] = ()) -> str:
    """A whole nginx.conf for an nginx the hub runs in the foreground, around `http`."""
    temp = [f"{kind}_temp_path {quote(f'{state_dir}/temp/{kind}')};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")]
    if not re.fullmatch(r"auto|[1-9][0-9]?", worker_processes):
        raise RouteError(f"worker_processes must be 'auto' or a number, not {worker_processes!r}")
    access = f"access_log {quote(access_log)};" if access_log else "access_log off;"
    inner = "\n".join(f"    {line}" if line else "" for line in [*temp, access, *http.splitlines()])
    load = "".join(f"load_module {quote(m)};\n" for m in modules)
    return (f"# Generated by hpcgate-nginx: nginx run by the hub in the foreground.\n"
            f"{load}daemon off;\nmaster_process on;\nworker_processes {worker_processes};\n"
            f"pid {quote(pid_file)};\nerror_log {quote(error_log)} warn;\n"
            f"events {{ worker_connections 4096; }}\n"
            f"http {{\n{inner}\n}}\n")
