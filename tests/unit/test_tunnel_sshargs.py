"""The pure builders of the tunnel's ssh command lines and the reader of what ssh prints."""

from __future__ import annotations

from gateway.tunnel.client import rewrite_hub_urls
from gateway.tunnel.sshargs import (
    HOST_KEY_ALIAS,
    ForwardWatch,
    ReverseTunnel,
    host_keys_for,
    known_hosts_text,
    parse_line,
    reverse_argv,
)

SPEC = ReverseTunnel(ssh_host="10.0.0.1", ssh_port=2222, ssh_user="hpcgate-tunnel",
                     remote_port=41234, server_port=35001,
                     api_local_socket="/tmp/hpcgate-hubapi-x1/hub.sock",
                     hub_api_host="10.0.0.1", hub_api_port=8081)


def option(argv: list[str], name: str) -> str:
    values = [argv[i + 1].split("=", 1)[1] for i, a in enumerate(argv)
              if a == "-o" and argv[i + 1].startswith(f"{name}=")]
    assert len(values) == 1, (name, values)
    return values[0]


def test_reverse_argv_forwards_the_port_and_the_hub_api_to_a_private_socket() -> None:
    argv = reverse_argv(SPEC, "/home/a/.hpcgate/k", "/home/a/.hpcgate/kh")
    assert argv[0] == "ssh" and argv[-2:] == ["--", "10.0.0.1"]
    assert argv[argv.index("-R") + 1] == "127.0.0.1:41234:127.0.0.1:35001"
    # Not a port on the node's loopback, which every user of a shared node can open.
    assert argv[argv.index("-L") + 1] == "/tmp/hpcgate-hubapi-x1/hub.sock:10.0.0.1:8081"
    assert option(argv, "StreamLocalBindUnlink") == "yes"
    assert argv.count("-R") == 1 and argv.count("-L") == 1
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "hpcgate-tunnel"
    assert "-N" in argv and "-T" in argv and argv[argv.index("-F") + 1] == "/dev/null"


def test_reverse_argv_is_batch_pinned_and_fast() -> None:
    argv = reverse_argv(SPEC, "/k", "/kh", ssh="/usr/bin/ssh")
    assert argv[0] == "/usr/bin/ssh"
    assert option(argv, "BatchMode") == "yes"
    assert option(argv, "StrictHostKeyChecking") == "yes"
    assert option(argv, "UserKnownHostsFile") == "/kh"
    assert option(argv, "GlobalKnownHostsFile") == "/dev/null"
    assert option(argv, "HostKeyAlias") == HOST_KEY_ALIAS
    assert option(argv, "IdentityFile") == "/k" and option(argv, "IdentitiesOnly") == "yes"
    assert option(argv, "ExitOnForwardFailure") == "yes"
    assert option(argv, "ServerAliveInterval") == "5"
    assert option(argv, "Ciphers").startswith("aes128-gcm@openssh.com,")
    assert option(argv, "ForwardAgent") == "no" and option(argv, "ControlMaster") == "no"


def test_reverse_argv_brackets_ipv6_hub_api() -> None:
    spec = ReverseTunnel(**{**SPEC.__dict__, "hub_api_host": "::1"})
    argv = reverse_argv(spec, "/k", "/kh")
    assert argv[argv.index("-L") + 1] == "/tmp/hpcgate-hubapi-x1/hub.sock:[::1]:8081"


def test_no_secret_shaped_argument() -> None:
    argv = reverse_argv(SPEC, "/k", "/kh")
    assert not any("PRIVATE" in a or "\n" in a for a in argv)


def test_known_hosts_pins_under_the_alias() -> None:
    text = known_hosts_text(["ssh-ed25519 AAAAkey1", "ecdsa-sha2-nistp256 AAAAkey2"])
    assert text == (f"{HOST_KEY_ALIAS} ssh-ed25519 AAAAkey1\n"
                    f"{HOST_KEY_ALIAS} ecdsa-sha2-nistp256 AAAAkey2\n")


def test_host_keys_for_picks_the_endpoint_lines() -> None:
    known = ("[127.0.0.1]:22 ssh-ed25519 AAAAother\n"
             "[10.0.0.1]:2222,[hub]:2222 ssh-ed25519 AAAAmine\n"
             "# [10.0.0.1]:2222 ssh-ed25519 AAAAcomment\n"
             "@revoked [10.0.0.1]:2222 ssh-ed25519 AAAArevoked\n"
             "10.0.0.1 ssh-rsa AAAAport22\n")
    assert host_keys_for(known, "10.0.0.1", 2222) == ["ssh-ed25519 AAAAmine"]
    assert host_keys_for(known, "10.0.0.1", 22) == ["ssh-rsa AAAAport22"]
    assert host_keys_for(known, "10.9.9.9", 2222) == []


def test_parse_ssh_v_lines() -> None:
    ok_r = parse_line("debug1: remote forward success for: listen 127.0.0.1:41234, connect "
                      "127.0.0.1:35001")
    assert (ok_r.kind, ok_r.port) == ("remote-ok", 41234)
    ok_l = parse_line("debug1: Local forwarding listening on 127.0.0.1 port 36002.")
    assert (ok_l.kind, ok_l.port) == ("local-ok", 36002)
    ok_path = parse_line("debug1: Local forwarding listening on path /tmp/hpcgate-hubapi-x1/hub.sock.")
    assert (ok_path.kind, ok_path.port) == ("local-ok", "/tmp/hpcgate-hubapi-x1/hub.sock")
    bad = parse_line("Error: remote port forwarding failed for listen port 41234")
    assert (bad.kind, bad.port) == ("remote-failed", 41234)
    bad = parse_line("debug1: remote forward failure for: listen 127.0.0.1:41234, connect x:1")
    assert (bad.kind, bad.port) == ("remote-failed", 41234)
    bad = parse_line("bind [127.0.0.1]:36002: Address already in use")
    assert (bad.kind, bad.port) == ("local-failed", 36002)
    assert parse_line("debug1: channel 2: new [127.0.0.1]") is None
    # debug1 chatter is dropped from the job log; what ssh says without -v is kept
    watch = ForwardWatch({("local-ok", 36002)})
    assert watch.feed("debug1: channel 2: new [127.0.0.1]") == ""
    assert watch.feed("Permission denied (publickey).") == "said"


def test_rewrite_hub_urls_moves_api_and_activity_to_the_tunnel() -> None:
    env = {"JUPYTERHUB_API_URL": "http://10.0.0.1:8081/hub/api",
           "JUPYTERHUB_ACTIVITY_URL": "http://10.0.0.1:8081/hub/api/users/alice/activity",
           "JUPYTERHUB_BASE_URL": "/", "JUPYTERHUB_USER": "alice"}
    out = rewrite_hub_urls(env, "/tmp/hpcgate-hubapi-x1/hub.sock")
    sock = "http+unix://%2Ftmp%2Fhpcgate-hubapi-x1%2Fhub.sock"
    assert out["JUPYTERHUB_API_URL"] == f"{sock}/hub/api"
    assert out["JUPYTERHUB_ACTIVITY_URL"] == f"{sock}/hub/api/users/alice/activity"
    assert out["JUPYTERHUB_BASE_URL"] == "/" and env["JUPYTERHUB_API_URL"].startswith("http://10.")
