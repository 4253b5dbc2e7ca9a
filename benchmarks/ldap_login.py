"""LDAP login throughput and hub responsiveness: hpcgate's authenticator against jupyterhub-ldapauthenticator.

    python -m benchmarks.ldap_login [--dir /var/tmp/hpcgate-lab-ldapbench] [--logins 500] [--clients 8]

Both authenticators are configured alike, as a real site would run them: search-then-bind with the
service account, StartTLS with the lab CA verified, and an allowed-group lookup. Each one's
`authenticate(handler=None, data=...)` is called from asyncio by `--clients` concurrent tasks for
`--logins` logins (alice, bob and carol in turn): logins/s, p50, p99.

Then TCP_NODELAY on and off for hpcgate (pooled connections, and a new connection per login), and the
hub's `GET /hub/api` latency while a login hangs on a directory that accepts and never answers: a real
JupyterHub with configurable-http-proxy per authenticator, one stalled login, a probe every 50 ms.

Uses (or starts, and then stops) a lab in its own directory. The last line is
`ratio=<hpcgate logins/s / ldapauthenticator logins/s>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import secrets
import ssl
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import aiohttp

from gateway.lab import Lab
from gateway.lab.replica import HubProcess, StalledListener

REPO = Path(__file__).resolve().parents[1]
USERS = ("alice", "bob", "carol")
DEFAULT_DIR = "/var/tmp/hpcgate-lab-ldapbench"


def hpcgate_auth(ldap: dict[str, Any], pw: dict[str, str], **overrides: Any) -> Any:
    from auth.authenticator import LDAPAuthenticator

    config: dict[str, Any] = {
        "server_urls": [ldap["uri"]],
        "tls_ca_file": ldap["ca_cert"],
        "service_dn": ldap["service_dn"],
        "service_password": pw["svc-hpcgate"],
        "user_search_base": ldap["people_dn"],
        "group_search_base": ldap["groups_dn"],
        "allowed_groups": {"hpc-users"},
        "enable_auth_state": False,  # auth_state encryption is the hub's work, the same for both
        "failed_logins_per_user": 0,
        "failed_logins_per_address": 0,
    }
    config.update(overrides)
    return LDAPAuthenticator(**config)


def ldapauthenticator_auth(ldap: dict[str, Any], pw: dict[str, str]) -> Any:
    from ldapauthenticator import LDAPAuthenticator

    return LDAPAuthenticator(
        server_address=ldap["host"],
        server_port=ldap["port"],
        tls_strategy="before_bind",  # StartTLS
        tls_kwargs={"ca_certs_file": ldap["ca_cert"], "validate": ssl.CERT_REQUIRED},
        lookup_dn=True,
        lookup_dn_search_user=ldap["service_dn"],
        lookup_dn_search_password=pw["svc-hpcgate"],
        user_search_base=ldap["people_dn"],
        user_attribute="uid",
        lookup_dn_user_dn_attribute="uid",
        allowed_groups=[f"cn=hpc-users,{ldap['named_groups_dn']}"],
        auth_state_attributes=["uidNumber", "gidNumber", "homeDirectory", "loginShell"],
    )


def check_hpcgate(model: Any) -> bool:
    return bool(model) and "hpc-users" in model["auth_state"]["groups"]


def check_ldapauthenticator(model: Any) -> bool:
    return bool(model) and bool(model["auth_state"]["ldap_groups"])


async def run_logins(auth: Any, pw: dict[str, str], logins: int, clients: int,
                     check: Any) -> dict[str, float]:
    """`logins` calls of authenticate() from `clients` concurrent tasks: rate, p50, p99, errors."""
    for user in USERS:  # warm-up, not timed (imports, first connections)
        assert check(await auth.authenticate(None, {"username": user, "password": pw[user]}))
    latencies: list[float] = []
    errors = 0
    counter = iter(range(logins))

    async def client() -> None:
        nonlocal errors
        for i in counter:
            user = USERS[i % len(USERS)]
            t0 = time.perf_counter()
            try:
                ok = check(await auth.authenticate(None, {"username": user, "password": pw[user]}))
            except Exception:
                ok = False
            latencies.append(time.perf_counter() - t0)
            errors += not ok

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {"rate": logins / elapsed, "p50": statistics.median(latencies) * 1000,
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            "errors": errors}


# -- the hub while the directory stalls ---------------------------------------------------------------


HUB_CONFIG = {
    "hpcgate": """
c.JupyterHub.authenticator_class = "auth.authenticator.LDAPAuthenticator"
c.LDAPAuthenticator.server_urls = ["ldap://127.0.0.1:{port}"]
c.LDAPAuthenticator.tls_ca_file = {ca!r}
c.LDAPAuthenticator.service_dn = {svc!r}
c.LDAPAuthenticator.user_search_base = {people!r}
c.LDAPAuthenticator.group_search_base = {groups!r}
c.LDAPAuthenticator.allowed_groups = {{"hpc-users"}}
""",
    "ldapauthenticator": """
import ssl
c.JupyterHub.authenticator_class = "ldapauthenticator.LDAPAuthenticator"
c.LDAPAuthenticator.server_address = "127.0.0.1"
c.LDAPAuthenticator.server_port = {port}
c.LDAPAuthenticator.tls_strategy = "before_bind"
c.LDAPAuthenticator.tls_kwargs = {{"ca_certs_file": {ca!r}, "validate": ssl.CERT_REQUIRED}}
c.LDAPAuthenticator.lookup_dn = True
c.LDAPAuthenticator.lookup_dn_search_user = {svc!r}
c.LDAPAuthenticator.lookup_dn_search_password = {svc_password!r}
c.LDAPAuthenticator.user_search_base = {people!r}
c.LDAPAuthenticator.user_attribute = "uid"
c.LDAPAuthenticator.lookup_dn_user_dn_attribute = "uid"
c.LDAPAuthenticator.allowed_groups = ["cn=hpc-users,{named}"]
""",
}


async def hub_api_during_stall(kind: str, ldap: dict[str, Any], pw: dict[str, str], workdir: Path,
                               seconds: float = 3.0, probe_timeout: float = 5.0) -> dict[str, Any]:
    """Start a hub whose directory never answers, hang one login, probe /hub/api every 50 ms."""
    with StalledListener() as stalled:
        config = HUB_CONFIG[kind].format(
            port=stalled.port, ca=ldap["ca_cert"], svc=ldap["service_dn"], svc_password=pw["svc-hpcgate"],
            people=ldap["people_dn"], groups=ldap["groups_dn"], named=ldap["named_groups_dn"])
        env = {"JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32),
               "HPCGATE_LDAP_SERVICE_PASSWORD": pw["svc-hpcgate"]}
        hub = HubProcess(workdir / kind, config, env=env, pythonpath=str(REPO))
        with hub.running():
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as s:
                async with s.get(f"{hub.url}/hub/login") as page:
                    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', await page.text())
                assert xsrf, "no _xsrf token on the login page"
                data = {"username": "alice", "password": pw["alice"], "_xsrf": xsrf.group(1)}
                t_login = time.monotonic()
                login = asyncio.create_task(s.post(
                    f"{hub.url}/hub/login", data=data, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=seconds + probe_timeout)))
                await asyncio.sleep(0.2)
                latencies: list[float] = []
                timeouts = 0
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    t0 = time.monotonic()
                    try:
                        async with s.get(f"{hub.url}/hub/api",
                                         timeout=aiohttp.ClientTimeout(total=probe_timeout)) as resp:
                            await resp.read()
                        latencies.append(time.monotonic() - t0)
                    except asyncio.TimeoutError:
                        timeouts += 1
                        break  # the hub is frozen; one probe says it
                    await asyncio.sleep(0.05)
                try:
                    resp = await login
                    login_result = f"{resp.status} after {time.monotonic() - t_login:.1f} s"
                    resp.release()
                except (asyncio.TimeoutError, aiohttp.ClientError):
                    login_result = f"no answer after {time.monotonic() - t_login:.1f} s"
    latencies.sort()
    return {"probes": len(latencies), "timeouts": timeouts,
            "p50": statistics.median(latencies) * 1000 if latencies else None,
            "max": latencies[-1] * 1000 if latencies else None, "login": login_result,
            "probe_timeout": probe_timeout}


# -------------------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


async def main_async(args: argparse.Namespace, ldap: dict[str, Any], pw: dict[str, str]) -> None:
    rows = []
    hp = hpcgate_auth(ldap, pw)
    rows.append(("hpcgate-ldap", await run_logins(hp, pw, args.logins, args.clients, check_hpcgate)))
    opened = hp.directory.connections_opened()
    la = ldapauthenticator_auth(ldap, pw)
    rows.append(("ldapauthenticator 2.0.2",
                 await run_logins(la, pw, args.logins, args.clients, check_ldapauthenticator)))

    print(f"\n{args.logins} logins, {args.clients} concurrent clients, StartTLS + CA verified, "
          "search-then-bind + allowed-group lookup")
    print(f"{'authenticator':<26}{'logins/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for name, r in rows:
        print(f"{name:<26}{r['rate']:>10.1f}{r['p50']:>10.1f}{r['p99']:>10.1f}{r['errors']:>8}")
    print(f"(hpcgate opened {opened} directory connections for {args.logins + 3} logins)")

    print(f"\nTCP_NODELAY, hpcgate-ldap, {args.nodelay_logins} logins, {args.clients} clients")
    print(f"{'connections':<26}{'nodelay':>10}{'logins/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for label, pool in (("pooled", 8), ("new per login", 0)):
        for nodelay in (True, False):
            auth = hpcgate_auth(ldap, pw, tcp_nodelay=nodelay, pool_size=pool)
            r = await run_logins(auth, pw, args.nodelay_logins, args.clients, check_hpcgate)
            print(f"{label:<26}{'on' if nodelay else 'off':>10}{r['rate']:>10.1f}{r['p50']:>10.1f}"
                  f"{r['p99']:>10.1f}")
            auth.directory.close()

    if not args.skip_hub:
        print("\nGET /hub/api through a real hub + proxy while one login hangs on a directory that "
              "accepts and never answers (probes every 50 ms for 3 s)")
        print(f"{'authenticator':<26}{'answered':>10}{'p50 ms':>10}{'max ms':>10}  stalled login")
        with tempfile.TemporaryDirectory(prefix="hpcgate-ldapbench-") as tmp:
            for kind in ("hpcgate", "ldapauthenticator"):
                r = await hub_api_during_stall(kind, ldap, pw, Path(tmp))
                answered = f"{r['probes']}" + (f"+{r['timeouts']}x>{r['probe_timeout']:.0f}s"
                                               if r["timeouts"] else "")
                print(f"{kind:<26}{answered:>10}{fmt(r['p50']):>10}{fmt(r['max']):>10}  {r['login']}")
    ratio = rows[0][1]["rate"] / rows[1][1]["rate"]
    print(f"ratio={ratio:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.environ.get("HPCGATE_LDAPBENCH_DIR", DEFAULT_DIR))
    parser.add_argument("--logins", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--nodelay-logins", type=int, default=200)
    parser.add_argument("--skip-hub", action="store_true", help="leave out the real-hub stall measurement")
    args = parser.parse_args()
    # jupyterhub-ldapauthenticator never unbinds; its ResourceWarnings would drown the table.
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR)
    lab = Lab(args.dir)
    was_up = lab.status()["ok"]
    info = lab.info() if was_up else lab.up(nodes=1)
    try:
        ldap = info["ldap"]
        pw = json.loads(Path(ldap["passwords_file"]).read_text())
        asyncio.run(main_async(args, ldap, pw))
    finally:
        if not was_up:
            lab.down()


if __name__ == "__main__":
    main()
