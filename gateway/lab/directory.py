"""The lab's OpenLDAP directory: a private slapd with the demo people and groups.

Layout (what a university directory commonly looks like):
  ou=people            inetOrgPerson + posixAccount, {SSHA} passwords
  ou=posix,ou=groups   posixGroup with memberUid (what nss/sssd reads)
  ou=names,ou=groups   groupOfNames with member DNs (what web applications often read)
  ou=services          the gateway's service account for search-then-bind
posixGroup and groupOfNames are both STRUCTURAL in Debian's schema, hence two entries per group.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from gateway.lab.accounts import GROUPS, USERS, LabUser, group_gid
from gateway.lab.procs import LabError, run, start_daemon, tcp_open, wait_for

BASE_DN = "dc=example,dc=org"
PEOPLE_DN = f"ou=people,{BASE_DN}"
GROUPS_DN = f"ou=groups,{BASE_DN}"
POSIX_GROUPS_DN = f"ou=posix,{GROUPS_DN}"
NAMED_GROUPS_DN = f"ou=names,{GROUPS_DN}"
ADMIN_DN = f"cn=admin,{BASE_DN}"
SERVICE_DN = f"cn=svc-hpcgate,ou=services,{BASE_DN}"


def ssha(password: str) -> str:
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # noqa: S324 - the {SSHA} format
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def user_dn(name: str) -> str:
    return f"uid={name},{PEOPLE_DN}"


def demo_ldif(passwords: dict[str, str], lab_dir: Path) -> str:
    """The demo directory; `passwords` maps each user name and 'svc-hpcgate' to a password.
    Each user's homeDirectory is this lab's `DIR/home/<user>` (see accounts.LabUser.workdir)."""
    entries = [
        f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\n"
        "o: hpcgate lab university",
        f"dn: {PEOPLE_DN}\nobjectClass: organizationalUnit\nou: people",
        f"dn: {GROUPS_DN}\nobjectClass: organizationalUnit\nou: groups",
        f"dn: {POSIX_GROUPS_DN}\nobjectClass: organizationalUnit\nou: posix",
        f"dn: {NAMED_GROUPS_DN}\nobjectClass: organizationalUnit\nou: names",
        f"dn: ou=services,{BASE_DN}\nobjectClass: organizationalUnit\nou: services",
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: svc-hpcgate\ndescription: hpcgate search account\n"
        f"userPassword: {ssha(passwords['svc-hpcgate'])}",
    ]
    entries += [person_entry(u, passwords[u.name], lab_dir) for u in USERS]
    entries += group_entries()
    return "\n\n".join(entries) + "\n"


def group_entries() -> list[str]:
    """Each lab group twice (posixGroup and groupOfNames), with the named users as members."""
    entries = []
    for g in GROUPS:
        members = [u.name for u in USERS if g.name in u.groups]
        entries.append(
            f"dn: cn={g.name},{POSIX_GROUPS_DN}\nobjectClass: posixGroup\ncn: {g.name}\n"
            f"gidNumber: {g.gid}\ndescription: {g.description}"
            + "".join(f"\nmemberUid: {m}" for m in members)
        )
        entries.append(
            f"dn: cn={g.name},{NAMED_GROUPS_DN}\nobjectClass: groupOfNames\ncn: {g.name}\n"
            f"description: {g.description}" + "".join(f"\nmember: {user_dn(m)}" for m in members)
        )
    return entries


def person_entry(u: LabUser, password: str, lab_dir: Path) -> str:
    given, _, family = u.full_name.partition(" ")
    return (f"dn: {user_dn(u.name)}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\n"
            f"uid: {u.name}\ncn: {u.full_name}\ngivenName: {given}\nsn: {family}\n"
            f"mail: {u.name}@example.org\nuidNumber: {u.uid}\ngidNumber: {group_gid(u.groups[0])}\n"
            f"homeDirectory: {u.workdir(lab_dir)}\nloginShell: /bin/bash\n"
            f"userPassword: {ssha(password)}")


def extra_users_ldif(users: tuple[LabUser, ...], passwords: dict[str, str], lab_dir: Path) -> str:
    """People entries for `lab up --users N` (added to a running directory)."""
    return "\n\n".join(person_entry(u, passwords[u.name], lab_dir) for u in users) + "\n"


def memberships_ldif(users: tuple[LabUser, ...]) -> str:
    """Add the users to their groups, in both group layouts (posixGroup and groupOfNames).
    One change per value: a value already there fails only its own change (ldapmodify -c)."""
    changes = []
    for u in users:
        for group in u.groups:
            changes.append(f"dn: cn={group},{POSIX_GROUPS_DN}\nchangetype: modify\nadd: memberUid\n"
                           f"memberUid: {u.name}\n-")
            changes.append(f"dn: cn={group},{NAMED_GROUPS_DN}\nchangetype: modify\nadd: member\n"
                           f"member: {user_dn(u.name)}\n-")
    return "\n\n".join(changes) + "\n"


def ensure_extra_users(lab_dir: Path, ldap_port: int, admin_password: str, users: tuple[LabUser, ...],
                       passwords: dict[str, str]) -> None:
    """Add people and memberships to the running directory; ones already there are kept."""
    if users:
        _modify(lab_dir, ldap_port, admin_password,
                ((extra_users_ldif(users, passwords, lab_dir), "Already exists"),
                 (memberships_ldif(users), "Type or value exists")))


def ensure_groups(lab_dir: Path, ldap_port: int, admin_password: str) -> None:
    """The lab's groups and the named users' memberships in the running directory: a directory
    made before a group existed (soundscape-leads) gets it; what is there is kept."""
    _modify(lab_dir, ldap_port, admin_password,
            (("\n\n".join(group_entries()) + "\n", "Already exists"),
             (memberships_ldif(USERS), "Type or value exists")))


def _modify(lab_dir: Path, ldap_port: int, admin_password: str,
            steps: tuple[tuple[str, str], ...]) -> None:
    """ldapmodify each LDIF as the directory's admin; errors that only say `tolerated` pass."""
    secret = lab_dir / "secrets" / "admin.password"
    secret.touch(mode=0o600)
    secret.write_text(admin_password)  # -y reads it without a trailing newline
    uri = f"ldap://127.0.0.1:{ldap_port}"
    for ldif, tolerated in steps:
        res = run(["ldapmodify", "-a", "-c", "-x", "-H", uri, "-D", ADMIN_DN, "-y", str(secret)],
                  check=False, input=ldif)
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("ldap_")]
        if res.returncode != 0 and not all(tolerated in ln for ln in errors):
            raise LabError(f"Updating the lab's directory failed: {res.stderr.strip()}")


def homes_ldif(lab_dir: Path) -> str:
    """Set each user's homeDirectory to this lab's: directories made before it had one said /home."""
    return "\n\n".join(f"dn: {user_dn(u.name)}\nchangetype: modify\nreplace: homeDirectory\n"
                       f"homeDirectory: {u.workdir(lab_dir)}\n-" for u in USERS) + "\n"


def slapd_conf(ldap_dir: Path, tls_dir: Path, admin_password: str) -> str:
    return f"""# hpcgate lab directory (generated by `hpcgate lab up`)
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile {ldap_dir}/slapd.pid
argsfile {ldap_dir}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile {tls_dir}/ca.crt
TLSCertificateFile {tls_dir}/server.crt
TLSCertificateKeyFile {tls_dir}/server.key

database mdb
suffix "{BASE_DN}"
rootdn "{ADMIN_DN}"
rootpw {ssha(admin_password)}
directory {ldap_dir}/db
maxsize 104857600
dbnosync
index objectClass eq
index uid,cn,memberUid,member,uniqueMember eq

# Passwords are only ever compared by a bind; nobody reads them.
access to attrs=userPassword by self write by anonymous auth by * none
# Like most university directories: authenticated clients read, anonymous ones only bind.
access to * by users read by * none
"""


def start_slapd(lab_dir: Path, ldap_port: int, ldaps_port: int, admin_password: str,
                passwords: dict[str, str]) -> int:
    ldap_dir = lab_dir / "ldap"
    db = ldap_dir / "db"
    conf = ldap_dir / "slapd.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(slapd_conf(ldap_dir, lab_dir / "tls", admin_password))
    conf.chmod(0o600)
    if not (db / "data.mdb").exists():
        db.mkdir(parents=True, exist_ok=True)
        ldif = ldap_dir / "demo.ldif"
        ldif.write_text(demo_ldif(passwords, lab_dir))
        ldif.chmod(0o600)
        run(["slapadd", "-q", "-f", str(conf), "-l", str(ldif)])
    else:  # slapd is not running here: the database may be edited offline
        homes = ldap_dir / "homes.ldif"
        homes.write_text(homes_ldif(lab_dir))
        run(["slapmodify", "-f", str(conf), "-l", str(homes)])
    log = lab_dir / "log" / "slapd.log"
    urls = f"ldap://127.0.0.1:{ldap_port}/ ldaps://127.0.0.1:{ldaps_port}/"
    pid = start_daemon(["slapd", "-f", str(conf), "-h", urls, "-d", "none"], lab_dir, log)
    wait_for(lambda: tcp_open("127.0.0.1", ldap_port) and tcp_open("127.0.0.1", ldaps_port),
             10, "slapd", log)
    return pid
