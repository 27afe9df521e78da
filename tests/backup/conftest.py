"""Fixtures for the backup engine: a fresh repository on a filesystem store per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetkeep.backup import ChunkerParams, Repository
from fleetkeep.backup.stores import FilesystemStore

# Small chunks and packs so tests exercise many chunks and packs on little data.
SMALL_CHUNKS = ChunkerParams(min_size=4096, avg_size=16384, max_size=65536)
SMALL_PACKS = 256 * 1024


@pytest.fixture
def dek() -> bytes:
    return os.urandom(32)


@pytest.fixture
def store(tmp_path: Path) -> FilesystemStore:
    return FilesystemStore(tmp_path / "repo")


@pytest.fixture
def repo(store: FilesystemStore, dek: bytes) -> Repository:
    # Packs of 256 KiB instead of 16 MiB, so a few MB of test data span several packs.
    return Repository.init(store, dek, chunker=SMALL_CHUNKS, pack_target=SMALL_PACKS)
