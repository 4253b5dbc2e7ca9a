"""The launcher's `depots/` folder: exactly the wanted links, stale ones removed, users' files kept."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gateway.depots.links import make_links, prepare_server


def entry(folder: Path, **links: str) -> dict:
    return {"dir": str(folder), "links": links}


def links_in(folder: Path) -> dict[str, str]:
    return {p.name: os.readlink(p) for p in folder.iterdir() if p.is_symlink()}


def test_links_are_made_and_kept_and_nothing_is_copied(tmp_path: Path) -> None:
    depot = tmp_path / "srv" / "lab"
    depot.mkdir(parents=True)
    (depot / "big.wav").write_bytes(b"RIFF" + bytes(1000))
    folder = tmp_path / "home" / "depots"
    (tmp_path / "home").mkdir()
    assert make_links(entry(folder, lab=str(depot))) == {"lab": "linked"}
    assert links_in(folder) == {"lab": str(depot)}
    assert (folder / "lab" / "big.wav").read_bytes()[:4] == b"RIFF"
    assert (folder / "lab").is_symlink()
    assert make_links(entry(folder, lab=str(depot))) == {"lab": "kept"}


def test_stale_and_retargeted_links_go_and_users_files_stay(tmp_path: Path) -> None:
    folder = tmp_path / "depots"
    folder.mkdir()
    (folder / "old-project").symlink_to("/srv/depots/old-project")
    (folder / "lab").symlink_to("/srv/depots/moved-away")
    (folder / "my-notes.txt").write_text("mine")
    (folder / "scratch").mkdir()
    log: list[str] = []
    outcome = make_links(entry(folder, lab="/srv/depots/lab", ref="/srv/depots/ref"), log.append)
    assert outcome == {"old-project": "removed", "lab": "linked", "ref": "linked"}
    assert links_in(folder) == {"lab": "/srv/depots/lab", "ref": "/srv/depots/ref"}
    assert (folder / "my-notes.txt").read_text() == "mine" and (folder / "scratch").is_dir()
    assert log == []


def test_a_users_file_with_a_depots_name_is_never_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "depots"
    folder.mkdir()
    (folder / "lab").write_text("precious")
    log: list[str] = []
    assert make_links(entry(folder, lab="/srv/depots/lab"), log.append) == {"lab": "skipped"}
    assert (folder / "lab").read_text() == "precious"
    assert log == [f"hpcgate: depot link {folder}/lab not made: something else has that name"]


def test_no_depots_left_removes_the_links_and_the_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "depots"
    folder.mkdir()
    (folder / "lab").symlink_to("/srv/depots/lab")
    assert make_links(entry(folder)) == {"lab": "removed"}
    assert not folder.exists()
    # Nothing wanted and no folder: none is made.
    assert make_links(entry(folder)) == {}
    assert not folder.exists()


def test_a_depots_symlink_or_file_is_left_alone(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = tmp_path / "depots"
    folder.symlink_to(elsewhere)
    log: list[str] = []
    assert make_links(entry(folder, lab="/srv/depots/lab"), log.append) == {}
    assert list(elsewhere.iterdir()) == []  # never followed
    assert log and "exists and is not a folder; left alone" in log[0]
    folder.unlink()
    folder.write_text("a file")
    assert make_links(entry(folder, lab="/srv/depots/lab"), log.append) == {}
    assert folder.read_text() == "a file"


def test_names_that_are_not_plain_are_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "depots"
    log: list[str] = []
    outcome = make_links(entry(folder, **{"../escape": "/srv/x", "ok": "/srv/ok"}), log.append)
    assert outcome == {"../escape": "skipped", "ok": "linked"}
    assert not (tmp_path / "escape").exists()
    assert links_in(folder) == {"ok": "/srv/ok"}


def test_tilde_is_the_users_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert make_links({"dir": "~/depots", "links": {"lab": "/srv/depots/lab"}}) == {"lab": "linked"}
    assert links_in(tmp_path / "depots") == {"lab": "/srv/depots/lab"}


def test_prepare_server_lets_files_follow_exactly_the_linked_depots(tmp_path: Path,
                                                                   monkeypatch) -> None:
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", "/etc/site-jupyter")
    home, state = tmp_path / "home", tmp_path / "state"
    home.mkdir()
    state.mkdir()
    (home / "depots").mkdir()
    (home / "depots" / "lab").write_text("the user's own file, not a link")
    prepare_server(entry(home / "depots", lab="/srv/depots/lab", ref="/srv/depots/ref"), state)
    config = json.loads((state / "jupyter-config" / "jupyter_server_config.json").read_text())
    # Only the link actually made counts; the root stays allowed.
    assert config == {"FileContentsManager": {"files_handler_params": {
        "path": str(home), "allowed_symlink_directory": [str(home), "/srv/depots/ref"]}}}
    assert os.environ["JUPYTER_CONFIG_PATH"] == f"{state / 'jupyter-config'}:/etc/site-jupyter"


def test_prepare_server_without_depots_changes_no_configuration(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("JUPYTER_CONFIG_PATH", raising=False)
    prepare_server(entry(tmp_path / "depots"), tmp_path)
    assert not (tmp_path / "jupyter-config").exists() and "JUPYTER_CONFIG_PATH" not in os.environ
