"""`hpcgate demo`: the lab plus the portal on http://127.0.0.1:8000, in the foreground.

LDAP login against the lab's directory, the lab's site policy (site_configs/demo.yaml), JupyterLab
in Slurm jobs on c1 and c2. Ctrl-C stops the hub; `hpcgate lab down` stops the lab and its jobs.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from gateway.lab import Lab
from gateway.lab.accounts import HUB_USER
from gateway.lab.hub import LabHub


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(lab_dir: Path, port: int) -> int:
    # `kill` stops the portal as cleanly as Ctrl-C: the hub and its proxy never outlive the demo.
    signal.signal(signal.SIGTERM, _interrupt)
    info = Lab(lab_dir).up(nodes=2)
    hub = LabHub(info, Path(info["dir"]) / "hub", ldap_login=True,
                 proxy_port=port)
    # The policy's depots, provisioned, and soundscape-lab's generated recordings (written once).
    from gateway.lab.demo_data import DEMO_LARGE_BYTES, prepare_lab_depots

    prepare_lab_depots(hub.policy_file, large_bytes=DEMO_LARGE_BYTES)
    hub.start(timeout=90)
    passwords = json.loads(Path(info["ldap"]["passwords_file"]).read_text())
    print(f"\nhpcgate is running on {hub.url}  (Ctrl-C stops the portal; the lab keeps running)")
    assert hub.proc is not None
    # Not root: the hub and its proxy run as the hub's account, with the generated sudoers rules.
    print(f"The hub runs as {HUB_USER} (pid {hub.proc.pid}; `ps -o user,pid,args -p "
          f"{hub.proc.pid}`), its sudo rules in {hub.sudoers}\n")
    print("Log in with the lab directory's accounts:")
    for user, about in (("alice", "soundscape-lab: partitions debug and long (12 h)"),
                        ("bob", "soundscape-lab: partitions debug and long (12 h)"),
                        ("carol", "hub-admins: both partitions, runs the portal (never opens servers)")):
        print(f"  {user:<6} password {passwords[user]:<18} {about}")
    print(f"\nData depots (alice, bob: soundscape-lab with recordings): {hub.url}/hub/depots")
    print(f"\nHub log: {hub.log}\nStop the lab: hpcgate lab down --dir {info['dir']}")
    try:
        assert hub.proc is not None
        hub.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()
    return 0
