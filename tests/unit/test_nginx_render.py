"""hpcgate-nginx's pure parts: routes rendered to nginx configuration, their order, and what may
never reach a directive unescaped."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote as url_quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.hub.proxy.render import (
    DOT_SEGMENT,
    RouteError,
    Settings,
    order,
    parse_routespec,
    parse_target,
    quote,
    render_http,
    render_main,
    table_line,
)
from gateway.lab.hub import proxy_config

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings(listen=("127.0.0.1:8000",), status_listen="unix:/s/status.sock", generation=7,
                    error_target="http://10.0.0.1:8081/hub/error")


def nginx_string(text: str) -> tuple[str, str]:
    """Read one token as nginx's parser does (ngx_conf_read_token): a double-quoted string with
    \\" and \\\\ unescaped, ending at the first unescaped quote; (value, the rest)."""
    assert text[0] == '"'
    out, i = [], 1
    while text[i] != '"':
        if text[i] == "\\" and text[i + 1] in '"\\\'':
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out), text[i + 1:]


def locations(conf: str) -> dict[str, str]:
    """location value (decoded as nginx reads it) -> the block's first directive."""
    found = {}
    for line in conf.splitlines():
        m = re.match(r"\s*location (= )?(\".*)", line)
        if m:
            value, rest = nginx_string(m.group(2))
            found[("= " if m.group(1) else "") + value] = rest.strip()
    return found


def test_one_location_per_prefix_upstreams_with_keepalive_and_headers_from_the_peer() -> None:
    conf = render_http({"/": {"target": "http://10.0.0.1:8081"},
                        "/user/alice/": {"target": "http://10.0.0.2:40000"},
                        "/user/alice-2/": {"target": "http://10.0.0.2:40000"}}, SETTINGS)
    upstreams = re.findall(r"upstream (\S+) \{ server (\S+); keepalive 32; \}", conf)
    assert sorted(u[1] for u in upstreams) == ["10.0.0.1:8081", "10.0.0.2:40000"]  # shared
    alice = parse_target("http://10.0.0.2:40000").upstream
    assert locations(conf) == {
        "/": f"{{ proxy_pass http://{parse_target('http://10.0.0.1:8081').upstream}; }}",
        "/user/alice/": f"{{ proxy_pass http://{alice}; }}",
        "= /user/alice": f"{{ proxy_pass http://{alice}; }}",
        "/user/alice-2/": f"{{ proxy_pass http://{alice}; }}",
        "= /user/alice-2": f"{{ proxy_pass http://{alice}; }}",
    }
    for directive in ("proxy_set_header X-Real-IP $remote_addr;",
                      "proxy_set_header X-Forwarded-For $remote_addr;",
                      "proxy_buffering off;", "proxy_request_buffering off;", "client_max_body_size 0;",
                      "proxy_http_version 1.1;", "proxy_set_header Connection $hpcgate_connection_upgrade;",
                      "proxy_read_timeout 86400s;", "listen 127.0.0.1:8000 default_server;",
                      "listen unix:/s/status.sock;", 'return 200 "7\\n";',
                      "error_page 502 504 =503 @hpcgate_unreachable;", "proxy_method GET;",
                      "rewrite ^ /hub/error/503 break;",
                      # the hub's error page never sets a stranger's _xsrf cookie on the user
                      "proxy_hide_header Set-Cookie;"):
        assert directive in conf, directive
    # The client's own forwarding headers are never passed on.
    assert "$http_x_forwarded_for" not in conf and "$proxy_add_x_forwarded_for" not in conf


def test_without_a_default_route_unknown_paths_are_404_and_a_target_path_is_prepended() -> None:
    conf = render_http({"/services/x/": {"target": "http://127.0.0.1:9000/base/"}}, SETTINGS)
    up = parse_target("http://127.0.0.1:9000").upstream
    assert locations(conf)["/services/x/"] == f"{{ proxy_pass http://{up}/base$request_uri; }}"
    assert 'location / { return 404 "No route for this URL.\\n"; }' in conf


def test_host_routes_get_their_own_server_falling_back_to_the_default_route() -> None:
    conf = render_http({"/": {"target": "http://10.0.0.1:8081"},
                        "alice.hub.org/": {"target": "http://10.0.0.2:1"},
                        "bob.hub.org/x/": {"target": "http://10.0.0.3:1"}}, SETTINGS)
    servers = conf.split("server {")[1:]
    names = [re.search(r"server_name (\S+);", s).group(1) for s in servers[:3]]
    assert names == ["_", '"alice.hub.org"', '"bob.hub.org"']
    assert "default_server" in servers[0] and "default_server" not in servers[1]
    hub, alice = (parse_target(t).upstream for t in ("http://10.0.0.1:8081", "http://10.0.0.2:1"))
    assert locations(servers[1])["/"] == f"{{ proxy_pass http://{alice}; }}"
    assert locations(servers[2])["/"] == f"{{ proxy_pass http://{hub}; }}"  # bob has only /x/


def test_tls_listens_with_http2_and_the_sites_certificate() -> None:
    tls = Settings(listen=("0.0.0.0:443",), status_listen="unix:/s", generation=1,
                   tls=("/etc/ssl/hub.crt", "/etc/ssl/private/hub.key"))
    conf = render_http({"/": {"target": "http://10.0.0.1:8081"}}, tls)
    assert "listen 0.0.0.0:443 default_server ssl http2;" in conf
    assert 'ssl_certificate "/etc/ssl/hub.crt";' in conf
    assert 'ssl_certificate_key "/etc/ssl/private/hub.key";' in conf
    assert " ssl" not in render_http({"/": {"target": "http://10.0.0.1:8081"}}, SETTINGS)


def test_order_most_specific_first_host_routes_first() -> None:
    specs = ["/", "/user/alice/", "/user/alice/lab/", "h.org/", "/user/", "h.org/a/b/"]
    assert order(specs) == ["h.org/a/b/", "h.org/", "/user/alice/lab/", "/user/alice/", "/user/", "/"]


@pytest.mark.parametrize("spec", [
    "/user/a\n}\nserver {/", "/user/a%0A}/", "/user/a%09b/", "/user/a\x00/", "/user/alice",
    "ev il.org/", "a;b.org/", 'x".org/', "-bad.org/", "/user/%ZZ\r/",
])
def test_routespecs_that_could_break_out_are_refused(spec: str) -> None:
    with pytest.raises(RouteError):
        parse_routespec(spec)


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:1; evil;", 'http://127.0.0.1:1/"}', "http://127.0.0.1:1/a b", "http://$host:80",
    "http://127.0.0.1:1/{x}", "http://127.0.0.1:1/\n", "file:///etc/passwd", "gopher://h:1",
    "http://user:pw@h:1", "http://h:1/?q=1", "http://h:99999", "http://-h:1", "http://h:1/a#b",
])
def test_targets_that_are_not_plain_urls_are_refused(target: str) -> None:
    with pytest.raises(RouteError):
        parse_target(target)


def test_targets_accepted() -> None:
    assert parse_target("http://10.1.2.3:8888").host == "10.1.2.3"
    assert parse_target("http://[::1]:8888/").host == "[::1]"
    t = parse_target("https://node-7.cluster.example:443/prefix/")
    assert (t.scheme, t.host, t.port, t.path) == ("https", "node-7.cluster.example", 443, "/prefix")
    assert parse_target("http://h").port == 80


@given(st.lists(st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12),
                min_size=1, max_size=3))
def test_any_escaped_name_reads_back_as_nginx_matches_it(segments: list[str]) -> None:
    """Quotes, braces, semicolons, backslashes, spaces, '$', '#', non-ASCII: whatever a (URL-
    escaped) user or server name holds, nginx reads the location back as the decoded path."""
    path = "/" + "/".join(url_quote(s, safe="") for s in segments) + "/"
    conf = render_http({path: {"target": "http://127.0.0.1:1"}}, SETTINGS)
    decoded = "/" + "/".join(segments) + "/"
    assert decoded in locations(conf)
    # Nothing outside the quoted string: the line ends with the one proxy_pass block.
    assert locations(conf)[decoded].startswith("{ proxy_pass http://hpcgate_")


def test_quote_escapes_what_nginx_unescapes_and_refuses_control_characters() -> None:
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    assert nginx_string(quote('x"; } evil {') + " tail") == ('x"; } evil {', " tail")
    with pytest.raises(RouteError):
        quote("a\nb")


def test_main_config_runs_in_the_foreground_with_its_own_paths() -> None:
    conf = render_main("# http", "/st", "/st/p.pid", "/st/e.log", "auto")
    assert "daemon off;" in conf and 'pid "/st/p.pid";' in conf and 'error_log "/st/e.log" warn;' in conf
    assert 'proxy_temp_path "/st/temp/proxy";' in conf and "access_log off;" in conf
    with pytest.raises(RouteError):
        render_main("", "/st", "/p", "/e", "2; user root")


def test_lab_proxy_choice_and_entry_point() -> None:
    nginx = proxy_config("nginx", Path("/var/tmp/h"), 1)
    assert 'c.JupyterHub.proxy_class = "hpcgate-nginx"' in nginx
    assert "c.NginxProxy.state_dir = '/var/tmp/h/nginx'" in nginx
    assert "c.NginxProxy.pid_file = '/var/tmp/h/jupyterhub-proxy.pid'" in nginx
    assert "configurable-http-proxy" in proxy_config("chp", Path("/var/tmp/h"), 1)
    with pytest.raises(ValueError):
        proxy_config("traefik", Path("/x"), 1)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'hpcgate-nginx = "gateway.hub.proxy.nginx:NginxProxy"' in \
        pyproject.split('[project.entry-points."jupyterhub.proxies"]')[1]


def test_dot_segments_are_refused_at_the_edge_and_names_with_dots_are_not() -> None:
    conf = render_http({"/": {"target": "http://10.0.0.1:8081"}}, SETTINGS)
    assert f'if ($request_uri ~* "{DOT_SEGMENT}") {{ return 400 ' in conf
    dots = re.compile(DOT_SEGMENT, re.IGNORECASE)  # nginx's PCRE reads it alike
    for uri in ("/user/bob/../alice/", "/user/bob/%2E%2e/alice", "/user/bob/..%2Falice/x",
                "/user/bob%2f.%2fx", "/user/bob/..", "/user/bob/.?x", "/..", "/user/a/b/%2e./c"):
        assert dots.search(uri), uri
    for uri in ("/user/bob/.../x", "/user/bob/.x", "/user/bob/a..b/", "/user/bob/..x", "/user/bob/x..",
                "/user/bob/%252e%252e/x", "/hub/login?next=/user/../x", "/user/bob/x?a=%2f..%2f"):
        assert not dots.search(uri), uri


def test_routespecs_nginx_would_read_as_one_location_are_refused_by_name() -> None:
    # /user/a/ and /user/a// both give `location = "/user/a"`; %2F decodes to a second slash too.
    for other in ("/user/a//", "/user/a%2F/"):
        with pytest.raises(RouteError, match="already has the location"):
            render_http({"/user/a/": {"target": "http://10.0.0.5:1"},
                         other: {"target": "http://10.0.0.6:1"}}, SETTINGS)
    # The same path on another host is another server block: fine.
    render_http({"/user/a/": {"target": "http://10.0.0.5:1"},
                 "h.example.org/user/a/": {"target": "http://10.0.0.6:1"}}, SETTINGS)


def test_upstream_names_are_unique_and_of_many_lengths() -> None:
    # nginx compares a name only with those of the same length (see Target.upstream).
    names = [parse_target(f"http://10.1.{i // 250}.{i % 250}:{8000 + i}").upstream for i in range(1000)]
    assert len(set(names)) == 1000
    assert all(re.fullmatch(r"hpcgate_[0-9a-f]{16,47}", n) for n in names)
    assert len({len(n) for n in names}) == 32
    assert parse_target("http://10.0.0.1:80").upstream == parse_target("http://10.0.0.1").upstream


DYNAMIC = Settings(listen=("127.0.0.1:8000",), status_listen="unix:/s/private/status.sock",
                   generation=0, error_target="http://10.0.0.1:8081/hub/error", lua_dir="/pkg/proxy")


def test_dynamic_routes_live_in_the_route_table_not_the_configuration() -> None:
    conf = render_http({}, DYNAMIC)
    assert 'lua_package_path "/pkg/proxy/?.lua;;";' in conf
    assert "lua_shared_dict hpcgate_routes 16m;" in conf
    assert re.search(r"upstream hpcgate_routes \{\n.*\n\s+balancer_by_lua_block .*\n\s+keepalive 256;", conf)
    assert "proxy_pass $hpcgate_scheme://hpcgate_routes$hpcgate_uri;" in conf
    assert 'location @hpcgate_no_route { return 404 "No route for this URL.\\n"; }' in conf
    # Everything a route had stays: headers from the peer, no buffering, the hub's error page.
    for directive in ("proxy_set_header X-Real-IP $remote_addr;", "proxy_buffering off;",
                      "proxy_request_buffering off;", "client_max_body_size 0;",
                      "error_page 502 504 =503 @hpcgate_unreachable;", "proxy_hide_header Set-Cookie;",
                      f'if ($request_uri ~* "{DOT_SEGMENT}")'):
        assert directive in conf, directive
    status = conf.split("listen unix:/s/private/status.sock;")[1]
    assert "location = /_hpcgate_routes {\n        allow unix:;\n        deny all;" in status
    with pytest.raises(ValueError):  # routes never reach this configuration
        render_http({"/": {"target": "http://10.0.0.1:8081"}}, DYNAMIC)


def test_dynamic_routes_take_changes_on_a_unix_socket_only() -> None:
    from dataclasses import replace

    with pytest.raises(RouteError, match="unix socket"):
        render_http({}, replace(DYNAMIC, status_listen="127.0.0.1:9999"))


def test_the_main_config_loads_modules_first() -> None:
    conf = render_main("# http", "/st", "/st/p.pid", "/st/e.log", "auto",
                       modules=("/m/ndk_http_module.so", "/m/ngx_http_lua_module.so"))
    assert conf.splitlines()[1:3] == ['load_module "/m/ndk_http_module.so";',
                                      'load_module "/m/ngx_http_lua_module.so";']


def test_table_lines_hold_the_decoded_path_and_an_address() -> None:
    line = table_line(parse_routespec("/user/o%27brien%20x/"), parse_target("http://10.0.0.2:4000/base/"),
                      "10.0.0.2")
    assert line == "set\t/user/o'brien x/\thttp\t10.0.0.2\t4000\t/base"
    host = table_line(parse_routespec("Alice.hub.org/"), parse_target("http://[::1]:5"), "[::1]")
    assert host == "set\talice.hub.org/\thttp\t[::1]\t5\t"
    with pytest.raises(ValueError):  # a name never reaches the balancer
        table_line(parse_routespec("/x/"), parse_target("http://node1:5"), "node1")


def test_the_table_files_path_reaches_lua_as_decimal_escapes_only() -> None:
    from dataclasses import replace

    conf = render_http({}, replace(DYNAMIC, table_file='/st/a"b}\\x/table'))
    literal = re.search(r'load\(("[^"]*")\) \}', conf).group(1)
    assert re.fullmatch(r'"(\\[0-9]{3})+"', literal)
    assert bytes(int(d) for d in re.findall(r"[0-9]{3}", literal)).decode() == '/st/a"b}\\x/table'
