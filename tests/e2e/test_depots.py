"""Data depots with real users in real jobs: alice, bob and carol each run JupyterLab in a Slurm job
(the lab's site policy, LDAP login) and use the depots through their own server's contents API,
through the proxy, with their own tokens. The filesystem enforces access; hpcgate provisions it,
links it and shows it."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.lab.demo_data import LARGE_NAME, TEST_LARGE_BYTES, prepare_lab_depots
from tests.helpers.hub import Hub, running_hub
from tests.helpers.lab import as_user, passwords, workdir
from tests.helpers.paths import REPO
from tests.helpers.portal import Portal

pytestmark = pytest.mark.lab

USERS = ("alice", "bob", "carol")
SPAWN = {"partition": "debug", "walltime": "10m", "cpus": "1", "memory": "1G"}


def hpcgate(*args: str) -> subprocess.CompletedProcess[str]:
    """The `hpcgate` command of this checkout, as an admin runs it (root)."""
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


class DepotHub(Hub):
    """The hub plus each user's token, browser session, and the depots' paths."""

    tokens: dict[str, str]
    portals: dict[str, Portal]
    policy: Path
    lab_depot: Path
    ref_depot: Path

    def contents(self, token_of: str, method: str, path: str, body: Any = None,
                 server: str | None = None, quote_all: bool = False, query: str = ""
                 ) -> tuple[int, Any]:
        """A contents API call on `server`'s JupyterLab (default: the caller's own), as `token_of`."""
        server = server or token_of
        quoted = urllib.parse.quote(path, safe="" if quote_all else "/") + query
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.hub.url}/user/{server}/api/contents/{quoted}", data=data, method=method,
            headers={"Authorization": f"token {self.tokens[token_of]}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            try:
                return err.code, json.loads(text)
            except ValueError:
                return err.code, text

    def raw(self, user: str, url_path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, bytes]:
        req = urllib.request.Request(f"{self.hub.url}{url_path}", headers={
            "Authorization": f"token {self.tokens[user]}", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read(200)
        except urllib.error.HTTPError as err:
            return err.code, err.read(2000)

    def names(self, user: str, path: str) -> set[str]:
        status, model = self.contents(user, "GET", path)
        assert status == 200, (user, path, status, model)
        return {item["name"] for item in model["content"]}

    def write(self, user: str, path: str, text: str) -> tuple[int, Any]:
        return self.contents(user, "PUT", path, {"type": "file", "format": "text", "content": text})

    def read(self, user: str, path: str) -> tuple[int, Any]:
        return self.contents(user, "GET", path, query="?content=1&format=text&type=file")


@pytest.fixture(scope="module")
def depot_hub(lab: dict) -> Iterator[DepotHub]:
    lab_depot = Path(lab["dir"]) / "depots" / "soundscape-lab"
    ref_depot = Path(lab["dir"]) / "depots" / "reference-calls"
    bob_depots, carol_home = workdir(lab, "bob") / "depots", workdir(lab, "carol")
    carol_links = [carol_home / "sneaky-depot", carol_home / "sneaky-clip.wav"]
    secrets = passwords(lab)
    try:
        with running_hub(lab, "depots", hub_class=DepotHub, ldap_login=True) as h:
            h.policy, h.lab_depot, h.ref_depot = h.hub.policy_file, lab_depot, ref_depot
            # Provisioned from nothing each run, by the admin's command.
            shutil.rmtree(h.lab_depot.parent, ignore_errors=True)
            for name in ("soundscape-lab", "reference-calls"):
                created = hpcgate("depot", "create", name, "--policy", str(h.policy))
                assert created.returncode == 0, created.stdout + created.stderr
                assert f"{name}: created " in created.stdout and f"{name}: in order" in created.stdout
            prepare_lab_depots(h.policy, large_bytes=TEST_LARGE_BYTES)  # the demo's recordings
            (h.ref_depot / "README.txt").write_text("Reference calls, curated by the admins.\n")
            # bob's depots/ has a link the policy no longer gives, and a file of his own.
            for argv in (["mkdir", "-p", str(bob_depots)],
                         ["ln", "-sfn", "/var/tmp/retired-project", str(bob_depots / "old-project")]):
                assert as_user(lab, "bob", argv).returncode == 0
            as_user(lab, "bob", ["tee", str(bob_depots / "my-notes.txt")], input="mine\n")
            # carol plants symlinks into the lab's depot in her own home.
            as_user(lab, "carol", ["ln", "-sfn", str(h.lab_depot), str(carol_links[0])])
            as_user(lab, "carol", ["ln", "-sfn", str(h.lab_depot / "recordings" / "wren-trill.wav"),
                                   str(carol_links[1])])
            h.portals, h.tokens = {}, {}
            for user in USERS:  # log in through the directory: the groups come from LDAP
                portal = Portal(h.hub.url)
                status, url, body = portal.login(user, secrets[user])
                assert status == 200 and "/hub/login" not in url, Portal.login_error(body)
                h.portals[user] = portal
                status, token = h.api("POST", f"/users/{user}/tokens", {"note": "depots e2e"})
                assert status == 201, token
                h.tokens[user] = token["token"]
            try:
                for user in USERS:
                    status, body = h.spawn(user, SPAWN)
                    assert status in (201, 202), (user, body)
                for user in USERS:
                    h.wait_ready(user, timeout=120)
                yield h
            finally:
                for user in USERS:
                    h.stop_quietly(user)
    finally:
        for link in carol_links:
            link.unlink(missing_ok=True)
        shutil.rmtree(bob_depots, ignore_errors=True)


def test_each_server_links_exactly_the_depots_of_its_users_groups(depot_hub: DepotHub) -> None:
    assert depot_hub.names("alice", "depots") == {"soundscape-lab", "reference-calls"}
    assert depot_hub.names("carol", "depots") == {"reference-calls"}
    # bob's stale link is gone, his own file stays.
    assert depot_hub.names("bob", "depots") == {"soundscape-lab", "reference-calls", "my-notes.txt"}
    # Links, nothing copied: the entries point at the depots themselves.
    for user in USERS:
        folder = workdir(depot_hub.lab, user) / "depots"
        links = {p.name: os.readlink(p) for p in folder.iterdir() if p.is_symlink()}
        expected = {"reference-calls": str(depot_hub.ref_depot)}
        if user != "carol":
            expected["soundscape-lab"] = str(depot_hub.lab_depot)
        assert links == expected, user
        assert folder.stat().st_uid == depot_hub.lab["users"][user]["uid"]  # made by the job
    recordings = depot_hub.names("alice", "depots/soundscape-lab/recordings")
    assert {"dawn-chorus.wav", "wren-trill.wav", LARGE_NAME} <= recordings


def test_recordings_are_real_wav_and_the_long_one_streams_by_range(depot_hub: DepotHub) -> None:
    status, head = depot_hub.raw("alice", "/user/alice/files/depots/soundscape-lab/recordings/"
                                          "dawn-chorus.wav")
    assert status == 200 and head[:4] == b"RIFF" and head[8:12] == b"WAVE"
    status, part = depot_hub.raw("bob", f"/user/bob/files/depots/soundscape-lab/recordings/"
                                        f"{LARGE_NAME}", {"Range": "bytes=0-43"})
    assert status == 206 and part[:4] == b"RIFF" and len(part) == 44
    assert int.from_bytes(part[40:44], "little") == TEST_LARGE_BYTES - 44  # data chunk size
    # Through the link, hidden files stay hidden.
    hidden = depot_hub.lab_depot / ".calibration"
    hidden.write_text("gain table\n")
    try:
        status, body = depot_hub.raw("alice", "/user/alice/files/depots/soundscape-lab/.calibration")
        assert status == 404 and b"gain table" not in body
    finally:
        hidden.unlink()


def test_alice_writes_and_bob_of_the_same_group_modifies(depot_hub: DepotHub) -> None:
    name = f"depots/soundscape-lab/notes-{uuid.uuid4().hex[:8]}.txt"
    status, _ = depot_hub.write("alice", name, "dawn chorus at site A, 05:12\n")
    assert status == 201
    on_disk = depot_hub.lab_depot / Path(name).name
    st = on_disk.stat()
    # alice's job runs with umask 0027; the depot's default ACL keeps the file group-writable.
    assert (st.st_uid, st.st_gid) == (5001, 5101)
    assert stat.S_IMODE(st.st_mode) & 0o060 == 0o060, oct(st.st_mode)
    status, model = depot_hub.read("bob", name)
    assert status == 200 and model["content"] == "dawn chorus at site A, 05:12\n"
    status, _ = depot_hub.write("bob", name, "dawn chorus at site A, 05:12 (checked by bob)\n")
    assert status == 200
    status, model = depot_hub.read("alice", name)
    assert status == 200 and model["content"].endswith("(checked by bob)\n")
    # A folder alice makes is the group's too, all the way down.
    folder = f"depots/soundscape-lab/session-{uuid.uuid4().hex[:8]}"
    assert depot_hub.contents("alice", "PUT", folder, {"type": "directory"})[0] == 201
    assert depot_hub.write("bob", f"{folder}/bob.txt", "bob was here\n")[0] == 201
    d = (depot_hub.lab_depot / Path(folder).name).stat()
    assert d.st_gid == 5101 and d.st_mode & stat.S_ISGID


def test_carol_cannot_list_or_read_the_lab_depot_by_any_path(depot_hub: DepotHub) -> None:
    depot = str(depot_hub.lab_depot)
    secret = f"depots/soundscape-lab/secret-{uuid.uuid4().hex[:8]}.txt"
    assert depot_hub.write("alice", secret, "unpublished site coordinates\n")[0] == 201
    secret_path = f"{depot}/{Path(secret).name}"
    attempts = [
        "depots/soundscape-lab",                                   # no link in her depots/
        secret,
        f"depots/reference-calls/../soundscape-lab/{Path(secret).name}",
        "../../.." + depot,                                        # out of her root with ..
        "../.." + secret_path,
        depot,                                                     # absolute paths
        secret_path,
        "sneaky-depot",                                            # her own symlinks into it
        f"sneaky-depot/{Path(secret).name}",
        "sneaky-clip.wav",
    ]
    for path in attempts:
        for quote_all in (False, True):
            status, body = depot_hub.contents("carol", "GET", path, quote_all=quote_all)
            # A refusal in words, never a 500: stat() below her symlink is refused by the kernel
            # (gateway/job/contents.py says so as a 403), and nothing leaks.
            assert status in (400, 403, 404), (path, quote_all, status, body)
            text = json.dumps(body)
            assert "unpublished" not in text and "wren-trill" not in text and "RIFF" not in text
    for url in ("/user/carol/files/sneaky-clip.wav",
                f"/user/carol/files/sneaky-depot/{Path(secret).name}",
                f"/user/carol/files/..%2F..%2F..{urllib.parse.quote(secret_path, safe='')}"):
        status, body = depot_hub.raw("carol", url)
        assert status in (400, 403, 404), (url, status)
        assert b"unpublished" not in body and b"RIFF" not in body
    # Writing through her symlink fails too, and nothing lands in the depot.
    status, _ = depot_hub.write("carol", "sneaky-depot/carol.txt", "was here\n")
    assert status in (403, 404, 500)  # 500: jupyter_server's is_hidden meets EACCES, as above
    assert not (depot_hub.lab_depot / "carol.txt").exists()
    # The filesystem itself says no, not only the portal: carol's shell is refused too.
    assert as_user(depot_hub.lab, "carol", ["ls", depot]).returncode != 0
    # And carol does read the depot her admin group may read.
    assert depot_hub.names("carol", "depots/reference-calls") == {"README.txt"}


def test_a_read_only_depot_refuses_writes_from_members(depot_hub: DepotHub) -> None:
    status, model = depot_hub.read("alice", "depots/reference-calls/README.txt")
    assert status == 200 and model["content"].startswith("Reference calls")
    for user in ("alice", "bob", "carol"):
        name = f"{user}-{uuid.uuid4().hex[:6]}.txt"
        status, body = depot_hub.write(user, f"depots/reference-calls/{name}", "x\n")
        assert status == 403, (user, status, body)
        assert not (depot_hub.ref_depot / name).exists()
        status, _ = depot_hub.write(user, "depots/reference-calls/README.txt", "overwritten\n")
        assert status == 403, user
        status, _ = depot_hub.contents(user, "PUT", f"depots/reference-calls/dir-{name}",
                                       {"type": "directory"})
        assert status == 403, user
    assert (depot_hub.ref_depot / "README.txt").read_text().startswith("Reference calls")


def _depots_page(portal: Portal, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status, url, body = portal.request("/hub/depots")
        assert status == 200 and url.endswith("/hub/depots"), (status, url)
        if "computing…" not in body or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def _rows(body: str) -> dict[str, list[str]]:
    rows = re.findall(r'<tr data-depot="([^"]+)">(.*?)</tr>', body, re.S)
    return {name: [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row,
                                                                          re.S)]
            for name, row in rows}


def test_the_depots_page_shows_each_user_their_own_depots_with_access_and_size(
        depot_hub: DepotHub) -> None:
    alice = _rows(_depots_page(depot_hub.portals["alice"]))
    assert set(alice) == {"soundscape-lab", "reference-calls"}
    name, access, size, path, _ = alice["soundscape-lab"]
    assert (access, path) == ("read and write", str(depot_hub.lab_depot))
    mib = float(re.match(r"([\d.]+) MiB \(\d+ files\)$", size).group(1))
    assert 64.0 <= mib < 80, size  # the 64 MiB recording, the clips, the tests' notes
    assert alice["reference-calls"][1:3] == ["read only", "40 bytes (1 file)"]
    carol = _rows(_depots_page(depot_hub.portals["carol"]))
    assert set(carol) == {"reference-calls"} and carol["reference-calls"][1] == "read only"
    # Logged out: the login page, never a 500; odd queries change nothing.
    status, url, _ = Portal(depot_hub.hub.url).request("/hub/depots")
    assert status == 200 and "/hub/login" in url
    status, _, body = depot_hub.portals["bob"].request("/hub/depots?user=carol&x=%00%ff")
    assert status == 200 and set(_rows(body)) == {"soundscape-lab", "reference-calls"}


def test_depot_check_detects_a_mode_changed_by_hand_and_fix_repairs_it(depot_hub: DepotHub) -> None:
    policy, path = str(depot_hub.policy), depot_hub.lab_depot
    clean = hpcgate("depot", "check", "--policy", policy)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "Group numbers from the directory (ldap://127.0.0.1:" in clean.stdout
    assert "soundscape-lab: in order" in clean.stdout and "reference-calls: in order" in clean.stdout
    try:
        os.chmod(path, 0o777)  # noqa: S103 - an admin's slip, on purpose
        # The slip is real: carol can now look inside.
        assert as_user(depot_hub.lab, "carol", ["ls", str(path)]).returncode == 0
        drifted = hpcgate("depot", "check", "--policy", policy)
        assert drifted.returncode == 1, drifted.stdout
        assert (f"soundscape-lab: {path} has mode 0777; it should be 2770 (setgid; group "
                "soundscape-lab (gid 5101) reads and writes; others nothing).") in drifted.stdout
        assert "soundscape-lab: 1 problem. `hpcgate depot check --fix` repairs it." in drifted.stdout
        assert "reference-calls: in order" in drifted.stdout
        subprocess.run(["setfacl", "-k", str(depot_hub.ref_depot)], check=True)
        drifted = hpcgate("depot", "check", "reference-calls", "--policy", policy)
        assert drifted.returncode == 1 and "has no default ACL" in drifted.stdout
        assert "soundscape-lab" not in drifted.stdout  # only the depot asked about

        fixed = hpcgate("depot", "check", "--fix", "--policy", policy)
        assert fixed.returncode == 0, fixed.stdout
        assert "soundscape-lab: repaired: " in fixed.stdout
        assert "soundscape-lab: in order now" in fixed.stdout
        assert "reference-calls: in order now" in fixed.stdout
        assert stat.S_IMODE(path.stat().st_mode) == 0o2770
        assert as_user(depot_hub.lab, "carol", ["ls", str(path)]).returncode != 0
        assert hpcgate("depot", "check", "--policy", policy).returncode == 0
    finally:
        hpcgate("depot", "check", "--fix", "--policy", policy)
    listed = hpcgate("depot", "list", "--json", "--policy", policy)
    assert listed.returncode == 0
    assert {d["name"]: d["present"] for d in json.loads(listed.stdout)} == {
        "soundscape-lab": True, "reference-calls": True}
