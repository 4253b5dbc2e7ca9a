"""The depots page's sizes: walked in threads, cached, bounded in time, never blocking the hub."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

from gateway.hub import depots_page as hubpage
from gateway.hub.depots_page import DirSize, SizeCache, human_size, size_text, tree_size


def make_tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "one.wav").write_bytes(bytes(1000))
    (root / "a" / "two.wav").write_bytes(bytes(2000))
    (root / "a" / "b" / "three.wav").write_bytes(bytes(3000))


def test_tree_size_counts_files_and_never_follows_symlinks(tmp_path: Path) -> None:
    depot = tmp_path / "depot"
    make_tree(depot)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "huge").write_bytes(bytes(50_000))
    (depot / "link").symlink_to(outside)
    (depot / "filelink").symlink_to(outside / "huge")
    size = tree_size(str(depot), time_limit=10)
    assert (size.bytes, size.files, size.complete, size.error) == (6000, 3, True, None)


def test_tree_size_stops_at_its_time_limit(tmp_path: Path) -> None:
    make_tree(tmp_path)
    size = tree_size(str(tmp_path), time_limit=-1)
    assert not size.complete and size.bytes < 6000
    assert size_text(size).startswith("at least ")


def test_tree_size_of_what_is_not_there(tmp_path: Path) -> None:
    assert tree_size(str(tmp_path / "nope"), 1).error == "not provisioned yet"
    (tmp_path / "file").write_text("x")
    assert tree_size(str(tmp_path / "file"), 1).error == "not a directory"


def test_size_text_and_units() -> None:
    assert size_text(None) == "computing…"
    assert size_text(DirSize(64 * 1024 * 1024 + 44, 5, True)) == "64.0 MiB (5 files)"
    assert size_text(DirSize(1, 1, True)) == "1 byte (1 file)"
    assert size_text(DirSize(0, 0, True, "not provisioned yet")) == "not provisioned yet"
    assert human_size(1536) == "1.5 KiB" and human_size(3 * 1024**4) == "3.0 TiB"


async def test_sizes_are_computed_off_the_loop_cached_and_refreshed(tmp_path: Path,
                                                                   monkeypatch) -> None:
    make_tree(tmp_path)
    gate = threading.Event()
    walks: list[str] = []
    real = hubpage.tree_size

    def slow_tree_size(path: str, limit: float) -> DirSize:
        walks.append(threading.current_thread().name)
        gate.wait(10)
        return real(path, limit)

    monkeypatch.setattr(hubpage, "tree_size", slow_tree_size)
    cache = SizeCache(ttl=0.3, time_limit=5)
    t0 = time.monotonic()
    assert cache.get(str(tmp_path)) is None  # "computing…", at once
    assert cache.get(str(tmp_path)) is None
    await cache.settle([str(tmp_path)], timeout=0.1)
    assert time.monotonic() - t0 < 2 and cache.get(str(tmp_path)) is None
    assert len(walks) == 1 and walks[0].startswith("depot-size")  # one walk, in a worker thread
    gate.set()
    await cache.settle([str(tmp_path)], timeout=5)
    assert cache.get(str(tmp_path)).bytes == 6000
    (tmp_path / "new.wav").write_bytes(bytes(500))
    assert cache.get(str(tmp_path)).bytes == 6000  # cached
    await asyncio.sleep(0.4)
    assert cache.get(str(tmp_path)).bytes == 6000  # stale is shown while it is measured again
    await cache.settle([str(tmp_path)], timeout=5)
    assert cache.get(str(tmp_path)).bytes == 6500
    assert len(walks) == 2


async def test_a_failing_walk_becomes_a_sentence(tmp_path: Path, monkeypatch) -> None:
    def broken(path: str, limit: float) -> DirSize:
        raise OSError(os.strerror(5))

    monkeypatch.setattr(hubpage, "tree_size", broken)
    cache = SizeCache()
    cache.get(str(tmp_path))
    await cache.settle([str(tmp_path)], timeout=5)
    assert size_text(cache.get(str(tmp_path))).startswith("could not be measured")


def test_the_pages_are_registered_only_by_the_explicit_call() -> None:
    from jupyterhub import apihandlers, handlers

    import gateway.hub.spawner  # noqa: F401 - importing the spawner registers nothing
    from gateway.hub import handlers_installed, install_handlers

    before = (list(handlers.default_handlers), list(apihandlers.default_handlers))
    try:
        handlers.default_handlers[:] = [r for r in handlers.default_handlers if r[0] != "/depots"]
        apihandlers.default_handlers[:] = [r for r in apihandlers.default_handlers
                                           if r[0] != "/api/hpcgate/report"]
        assert not handlers_installed()
        install_handlers()
        install_handlers()  # twice is harmless
        assert handlers_installed()
        assert [h for p, h in handlers.default_handlers if p == "/depots"] == [hubpage.DepotsHandler]
    finally:
        handlers.default_handlers[:], apihandlers.default_handlers[:] = before


def test_the_size_limits_come_from_the_hubs_configuration(monkeypatch) -> None:
    from traitlets.config import Config

    monkeypatch.setattr(hubpage, "_sizes", None)
    config = Config()
    config.DepotsPage.size_time_limit = 90.0
    config.DepotsPage.size_ttl = 10.0
    cache = hubpage.sizes(config)
    assert (cache.time_limit, cache.ttl) == (90.0, 10.0)
    assert hubpage.sizes(Config()) is cache  # one cache for the hub
    assert "at least" in hubpage.DepotsPage.class_traits()["size_time_limit"].help
