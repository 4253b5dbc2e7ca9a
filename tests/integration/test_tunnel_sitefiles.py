"""The hub host's reverse-tunnel files: what ships in site_configs/tunnel is what the generator
makes, sshd accepts the configuration with the settings the tunnels depend on, and systemd
accepts the units."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gateway.cli import main as hpcgate
from gateway.tunnel.sitefiles import SERVICE_UNIT, SOCKET_UNIT, site_files, systemd_units

SHIPPED = Path(__file__).resolve().parents[2] / "site_configs" / "tunnel"


def test_shipped_files_are_the_generators_output() -> None:
    made = site_files([("192.0.2.10", 2222)], "/etc/hpcgate", "hpcgate-tunnel")
    assert sorted(made) == sorted(p.name for p in SHIPPED.iterdir())
    for name, text in made.items():
        assert (SHIPPED / name).read_text() == text, f"site_configs/tunnel/{name} is out of date"


def test_command_writes_the_files(tmp_path: Path) -> None:
    assert hpcgate(["tunnel-files", "--listen", "10.0.0.5:2222", "--listen", "[fd00::5]:2222",
                    "--out", str(tmp_path), "--etc", "/srv/hpcgate/"]) == 0
    socket_unit = (tmp_path / SOCKET_UNIT).read_text()
    assert "ListenStream=10.0.0.5:2222\nListenStream=[fd00::5]:2222\n" in socket_unit
    assert "-f /srv/hpcgate/tunnel_sshd_config\n" in (tmp_path / SERVICE_UNIT).read_text()
    assert "HostKey /srv/hpcgate/tunnel_host_ed25519_key\n" in \
        (tmp_path / "tunnel_sshd_config").read_text()


def test_sshd_accepts_the_config_and_it_allows_only_loopback_forwards(tmp_path: Path) -> None:
    files = site_files([("127.0.0.1", 2299)], str(tmp_path), "hpcgate-tunnel")
    config = tmp_path / "tunnel_sshd_config"
    config.write_text(files["tunnel_sshd_config"])
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "tunnel_host_ed25519_key")], check=True)
    subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(config)], check=True)
    effective = subprocess.run(
        ["/usr/sbin/sshd", "-T", "-f", str(config), "-C",
         "user=hpcgate-tunnel,host=node1,addr=10.1.1.1"],
        capture_output=True, text=True, check=True).stdout.splitlines()
    for line in ("strictmodes yes", "permitlisten 127.0.0.1:*", "forcecommand /bin/false",
                 "allowstreamlocalforwarding no", "gatewayports no", "permittty no",
                 "passwordauthentication no", "allowagentforwarding no", "logingracetime 10"):
        assert line in effective, line


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    for name, text in systemd_units([("127.0.0.1", 2299)], "/etc/hpcgate/tunnel_sshd_config").items():
        (tmp_path / name).write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / SOCKET_UNIT),
                          str(tmp_path / SERVICE_UNIT)], capture_output=True, text=True)
    assert out.returncode == 0 and "Failed" not in out.stderr and "Unknown" not in out.stderr, \
        out.stderr
    socket_unit = (tmp_path / SOCKET_UNIT).read_text()
    for line in ("Accept=yes", "NoDelay=yes", "MaxConnectionsPerSource=128"):
        assert f"\n{line}\n" in socket_unit
