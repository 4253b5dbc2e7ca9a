"""The `hpcgate` command."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def _print_lab(info: dict[str, Any], seconds: float | None = None) -> None:
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    slurm, ldap, ssh = info["slurm"], info["ldap"], info["ssh"]
    nodes = ", ".join(f"{n} ({v['address']})" for n, v in info["nodes"].items())
    parts = ", ".join(f"{p} (max {v['max_time']})" for p, v in slurm["partitions"].items())
    print(f"hpcgate lab is up{took}: {info['dir']}")
    print(f"  Slurm       nodes {nodes}; partitions {parts}")
    print(f"              export SLURM_CONF={slurm['conf']}")
    print(f"              slurmrestd {slurm['rest_url']} (JWT: scontrol token username=USER)")
    print(f"  LDAP        {ldap['uri']} (StartTLS)  {ldap['ldaps_uri']}  base {ldap['base_dn']}")
    print(f"              CA certificate {ldap['ca_cert']}")
    print(f"              service account {ldap['service_dn']}")
    print(f"              passwords (users, service, admin) in {ldap['passwords_file']}")
    print(f"  SSH         {ssh['host']}:{ssh['port']} (also on {', '.join(ssh['listen'][1:]) or '-'})"
          f"; known_hosts {ssh['known_hosts']}")
    print(f"              user keys {Path(next(iter(ssh['user_keys'].values()))).parent}/USER_ed25519")
    users = ", ".join(f"{n} (uid {u['uid']}, {' '.join(u['groups'])})" for n, u in info["users"].items())
    print(f"  Users       {users}")
    if "postgres" in info:
        pg = info["postgres"]
        print(f"  PostgreSQL  socket {pg['socket_dir']} (no TCP; root logs in as role {pg['role']} "
              "by peer authentication)")
        print(f"              db_url {pg['url_example']}")
    print(f"  Logs        {info['logs']}")


def cmd_lab(args: argparse.Namespace) -> int:
    from gateway.lab import Lab

    lab = Lab(args.dir)
    if args.action == "up":
        t0 = time.monotonic()
        info = lab.up(nodes=args.nodes, fresh_jobs=args.fresh, users=args.users,
                      background_jobs=args.background_jobs, postgres=args.postgres,
                      node_cpus=args.node_cpus)
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            _print_lab(info, time.monotonic() - t0)
        return 0
    if args.action == "status":
        status = lab.status()
        if args.json:
            print(json.dumps({**status, "info": lab.info()}, indent=2))
        elif not status["started"]:
            print(f"No lab has been started in {lab.dir}.")
        else:
            for name, s in status["services"].items():
                print(f"  {name:<12} {'running' if s['running'] else 'STOPPED':<8} pid {s['pid']}")
            if status["ok"]:
                _print_lab(lab.info())
        return 0 if status["ok"] else 1
    if args.action == "down":
        lab.down()
        print(f"hpcgate lab in {lab.dir} is down (data kept; `hpcgate lab up` starts it again).")
        return 0
    return 2


def cmd_jobs(args: argparse.Namespace) -> int:
    from gateway.admin import orphans

    return orphans.main(args.config, cancel=args.cancel, as_json=args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.lab import demo

    return demo.main(args.dir, args.port)


def build_parser() -> argparse.ArgumentParser:
    from gateway.lab import DEFAULT_DIR

    parser = argparse.ArgumentParser(prog="hpcgate", description="HPC notebook gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    lab = sub.add_parser("lab", help="a real Slurm + OpenLDAP + OpenSSH cluster on this machine")
    lab.add_argument("action", choices=["up", "status", "down"])
    lab.add_argument("--nodes", type=int, choices=[1, 2], default=1,
                     help="compute nodes: c1, and c2 in its own network namespace")
    lab.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state directory ({DEFAULT_DIR})")
    lab.add_argument("--json", action="store_true", help="machine-readable output")
    lab.add_argument("--fresh", action="store_true",
                     help="with up, when the lab is stopped: forget Slurm's saved jobs")
    lab.add_argument("--users", type=int, default=0, metavar="N",
                     help="with up: N extra users user01..userNN (directory and Unix accounts, "
                          "in hpc-users), kept by later runs")
    lab.add_argument("--background-jobs", type=int, default=0, metavar="N",
                     help="with up: keep N held jobs of other users in the queue (a busy "
                          "cluster); down cancels them")
    lab.add_argument("--postgres", action="store_true",
                     help="with up: also the lab's own PostgreSQL, for hubs that use it as their "
                          "database (kept by later runs)")
    lab.add_argument("--node-cpus", type=int, default=None, metavar="N",
                     help="with up: cores each node declares (16; more than the machine has, for "
                          "hundreds of small jobs at once), kept by later runs")
    lab.set_defaults(func=cmd_lab)

    demo = sub.add_parser("demo", help="the lab plus the portal on http://127.0.0.1:8000")
    demo.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"lab directory ({DEFAULT_DIR})")
    demo.add_argument("--port", type=int, default=8000, help="the portal's port on 127.0.0.1")
    demo.set_defaults(func=cmd_demo)

    sub.add_parser("check-config", add_help=False,
                   help="check a site policy file against the live cluster and directory")
    sub.add_parser("deploy-files", add_help=False,
                   help="write a site's hub files from its policy: jupyterhub_config.py, "
                        "sudoers, systemd units, a checklist")
    sub.add_parser("tunnel-files", add_help=False,
                   help="write the hub host's reverse-tunnel sshd_config and systemd units")
    jobs = sub.add_parser("jobs", help="the gateway's jobs on the scheduler")
    jobs.add_argument("action", choices=["orphans"],
                      help="orphans: jobs hpcgate submitted that no server of the hub owns")
    jobs.add_argument("--config", default="jupyterhub_config.py",
                      help="the hub's jupyterhub_config.py (for its database and scheduler)")
    jobs.add_argument("--cancel", action="store_true", help="cancel the orphan jobs")
    jobs.add_argument("--json", action="store_true", help="machine-readable output")
    jobs.set_defaults(func=cmd_jobs)
    from gateway.depots.command import add_parser as add_depot_parser

    add_depot_parser(sub)  # hpcgate depot list|create|check (gateway/depots/command.py)
    from gateway.admin.activity import add_parser as add_activity_parser

    add_activity_parser(sub)  # hpcgate activity export (gateway/admin/activity.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gateway.lab.procs import LabError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["check-config"]:  # has its own parser (gateway.admin.check)
        from gateway.admin.check import main as check_main

        return check_main(argv[1:])
    if argv[:1] == ["deploy-files"]:  # has its own parser (gateway.admin.deploy)
        from gateway.admin.deploy import main as deploy_files_main

        return deploy_files_main(argv[1:])
    if argv[:1] == ["tunnel-files"]:  # has its own parser (gateway.tunnel.sitefiles)
        from gateway.tunnel.sitefiles import main as tunnel_files_main

        return tunnel_files_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LabError as err:
        print(f"hpcgate: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `hpcgate lab up | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
