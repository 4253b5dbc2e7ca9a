"""What a site installs on the hub host for reverse tunnels, generated from one place (the lab
uses the same sshd configuration):

- `tunnel_sshd_config`: an sshd for one account, keys only, forwarding only; each job's
  authorized_keys line (written by the hub) narrows it to that job's port and the hub API. sshd
  reads the lines through `AuthorizedKeysCommand /usr/bin/cat FILE`, run as the hub's account:
  the file is the hub's own (in its state directory), so the hub never needs root to edit it,
  and StrictModes has no say over it (sshd checks the command, root's, instead);
- with systemd, `hpcgate-tunnel.socket` and `hpcgate-tunnel@.service`: the socket unit accepts
  with TCP_NODELAY (see gateway/tunnel/endpoint.py for why) and caps connections per source
  address, and each connection gets its own `sshd -i`. Without systemd, run
  `python -m gateway.tunnel.endpoint --listen ADDRESS:PORT --config tunnel_sshd_config`.

    hpcgate tunnel-files --listen 192.0.2.10:2222 --out DIR [--etc /etc/hpcgate]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.tunnel.endpoint import parse_listen

SOCKET_UNIT = "hpcgate-tunnel.socket"
SERVICE_UNIT = "hpcgate-tunnel@.service"


KEYS_COMMAND = "/usr/bin/cat"


def tunnel_sshd_config(host_key: str, authorized_keys: str, user: str, hub_user: str,
                       strict_modes: bool = True, header: str = "") -> str:
    """sshd_config for the tunnel account `user`, run as `sshd -i`. `authorized_keys` is the file
    the hub (account `hub_user`) edits; sshd reads it by running `cat` as `hub_user`, so no other
    account needs to read it. Measured (benchmarks/tunnel_keys_latency.py): the command adds
    about a millisecond to a login that takes tens."""
    return f"""{header}HostKey {host_key}
# The hub's keys file, read as the hub's account: no root-owned file the hub must edit as root.
AuthorizedKeysFile none
AuthorizedKeysCommand {KEYS_COMMAND} {authorized_keys}
AuthorizedKeysCommandUser {hub_user}
UsePAM no
StrictModes {"yes" if strict_modes else "no"}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers {user}
AllowTcpForwarding yes
AllowStreamLocalForwarding no
GatewayPorts no
PermitListen 127.0.0.1:*
PermitOpen any
PermitTTY no
PermitTunnel no
X11Forwarding no
AllowAgentForwarding no
ForceCommand /bin/false
# One sshd per connection, so MaxStartups cannot apply: connections that never log in go fast.
LoginGraceTime 10
MaxAuthTries 2
ClientAliveInterval 5
ClientAliveCountMax 3
LogLevel VERBOSE
"""


def systemd_units(listen: list[tuple[str, int]], sshd_config: str, sshd: str = "/usr/sbin/sshd",
                  max_sessions: int = 1000, max_per_source: int = 128) -> dict[str, str]:
    """The socket unit and the per-connection service template, by file name."""
    streams = "".join(f"ListenStream={f'[{h}]' if ':' in h else h}:{p}\n" for h, p in listen)
    socket_unit = f"""[Unit]
Description=hpcgate reverse-tunnel endpoint: sshd per connection, TCP_NODELAY

[Socket]
{streams}# The address may come up after sockets.target: bind it anyway.
FreeBind=yes
Accept=yes
NoDelay=yes
KeepAlive=yes
MaxConnections={max_sessions}
# One tunnel per running server; nodes behind one NAT address share this cap.
MaxConnectionsPerSource={max_per_source}

[Install]
WantedBy=sockets.target
"""
    service_unit = f"""[Unit]
Description=hpcgate reverse tunnel from %I

[Service]
ExecStart=-{sshd} -i -e -f {sshd_config}
StandardInput=socket
StandardError=journal
# sshd's privilege-separation directory, whether or not the host's own sshd runs
RuntimeDirectory=sshd
RuntimeDirectoryMode=0755
RuntimeDirectoryPreserve=yes
"""
    return {SOCKET_UNIT: socket_unit, SERVICE_UNIT: service_unit}


def site_files(listen: list[tuple[str, int]], etc: str, user: str,
               keys_file: str = "/var/lib/hpcgate-hub/tunnel/authorized_keys",
               hub_user: str = "hpcgate-hub") -> dict[str, str]:
    """Every file, by name, for a hub host whose tunnel files live in `etc`; the job keys are in
    `keys_file`, which the hub (`hub_user`) owns."""
    config = f"{etc}/tunnel_sshd_config"
    header = (f"# hpcgate reverse-tunnel endpoint; made by `hpcgate tunnel-files`.\n"
              f"# Host key:  ssh-keygen -t ed25519 -N '' -f {etc}/tunnel_host_ed25519_key\n"
              f"# Account:   useradd --system --shell /usr/sbin/nologin --password '*' {user}\n"
              f"#   ('*', not the default '!': sshd refuses keys of a locked account)\n"
              f"# Keys file: {keys_file}: the hub's ({hub_user}), in its state directory. The\n"
              f"#   hub adds and removes one line per job (the policy's connection.authorized_keys)\n"
              f"#   as {hub_user}; sshd reads it by running {KEYS_COMMAND} as {hub_user}.\n"
              f"# Check:     sshd -t -f {config}\n")
    return {"tunnel_sshd_config": tunnel_sshd_config(f"{etc}/tunnel_host_ed25519_key",
                                                     keys_file, user, hub_user, header=header),
            **systemd_units(listen, config)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpcgate tunnel-files", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=parse_listen, action="append", required=True,
                        help="ADDRESS:PORT the compute nodes reach the hub host on (repeatable)")
    parser.add_argument("--out", required=True, type=Path, help="directory to write the files to")
    parser.add_argument("--etc", default="/etc/hpcgate",
                        help="where the files will be installed (default /etc/hpcgate)")
    parser.add_argument("--user", default="hpcgate-tunnel", help="the tunnel account")
    parser.add_argument("--hub-user", default="hpcgate-hub", help="the hub's account")
    parser.add_argument("--keys-file", default="/var/lib/hpcgate-hub/tunnel/authorized_keys",
                        help="the hub's job keys file (connection.authorized_keys)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in site_files(args.listen, args.etc.rstrip("/"), args.user, args.keys_file,
                                 args.hub_user).items():
        (args.out / name).write_text(text)
        print(args.out / name)
    return 0
