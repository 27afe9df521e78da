"""A repository: a store plus the user's data key. Opening needs nothing else — no database.

Objects in the store (see docs/repository-format.md):
``config`` (format version in clear, parameters sealed), ``packs/xx/<id>``, ``index/<id>``,
``snapshots/<id>``, ``pending/<id>`` (packs prune is about to delete).
"""

from __future__ import annotations

import base64
import json
import mmap
import os
import secrets
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from fleetkeep.backup.chunker import Chunker, ChunkerParams
from fleetkeep.backup.crypto import (
    SEAL_OVERHEAD,
    BlobType,
    Crypto,
    ObjectKind,
    compress,
    content_name,
)
from fleetkeep.backup.errors import (
    IntegrityError,
    ObjectNotFound,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
    UnsupportedFormat,
    WrongKey,
)
from fleetkeep.backup.index import Index, decode_index, encode_index
from fleetkeep.backup.pack import (
    PACK_TARGET_BYTES,
    TRAILER_BYTES,
    PackEntry,
    PackWriter,
    header_length,
    pack_name,
    read_header,
)
from fleetkeep.backup.stores.base import Store
from fleetkeep.backup.tree import Node, decode_tree
from fleetkeep.keys.subkeys import derive_subkeys

if TYPE_CHECKING:
    from fleetkeep.backup.archiver import ProgressCallback
    from fleetkeep.backup.check import CheckReport
    from fleetkeep.backup.prune import PruneReport
    from fleetkeep.backup.restorer import RestoreStats
    from fleetkeep.backup.retention import RetentionPolicy

FORMAT_NAME = "fleetkeep-repository"
FORMAT_VERSION = 1
CONFIG = "config"
# An index file is written every this many packs, so a crash loses little indexing work
# (the next backup adopts unindexed packs anyway).
_INDEX_EVERY_PACKS = 64
_UPLOADS_IN_FLIGHT = 2
# Room in a pack buffer past the pack target (a blob that crosses the target still fits when
# it is smaller; a larger one starts the next pack), and written packs' buffers kept for reuse.
_PACK_SLACK = 1024 * 1024
_SPARE_BUFFERS = 1


@dataclass(frozen=True)
class RepoConfig:
    repository_id: str
    created: datetime
    chunker: ChunkerParams
    pack_target: int = PACK_TARGET_BYTES


@dataclass
class Snapshot:
    id: str
    time: datetime
    hostname: str
    device: str
    paths: list[str]
    tree: bytes
    excludes: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "version": FORMAT_VERSION,
                "time": self.time.isoformat(),
                "hostname": self.hostname,
                "device": self.device,
                "paths": self.paths,
                "tree": self.tree.hex(),
                "excludes": self.excludes,
                "stats": self.stats,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, snapshot_id: str, raw: bytes) -> Snapshot:
        try:
            d = json.loads(raw)
            return cls(
                id=snapshot_id,
                time=datetime.fromisoformat(d["time"]),
                hostname=str(d["hostname"]),
                device=str(d["device"]),
                paths=[str(p) for p in d["paths"]],
                tree=bytes.fromhex(d["tree"]),
                excludes=[str(e) for e in d.get("excludes", [])],
                stats={str(k): int(v) for k, v in d.get("stats", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"snapshot {snapshot_id}: malformed ({exc})") from exc


def _config_json(cfg: RepoConfig) -> bytes:
    c = cfg.chunker
    return json.dumps(
        {
            "repository_id": cfg.repository_id,
            "created": cfg.created.isoformat(),
            "chunker": {
                "algorithm": "fastcdc2020",
                "min_size": c.min_size,
                "avg_size": c.avg_size,
                "max_size": c.max_size,
                "seed": c.seed,
            },
            "pack_target": cfg.pack_target,
        }
    ).encode()


class Repository:
    """Open with :meth:`open` (or create with :meth:`init`); then back up, restore, check."""

    def __init__(
        self, store: Store, crypto: Crypto, config: RepoConfig, cache_dir: Path | None = None
    ) -> None:
        self.store = store
        self.crypto = crypto
        self.config = config
        # Index files and snapshots are immutable and named by their hash: a local copy saves
        # a remote store a round trip per object on every open.
        self.cache_dir = cache_dir
        self.object_cache = cache_dir / config.repository_id if cache_dir else None
        self.chunker = Chunker(config.chunker)
        self.index = Index()
        self.index_files: list[str] = []

    @classmethod
    def init(
        cls,
        store: Store,
        dek: bytes,
        *,
        chunker: ChunkerParams | None = None,
        pack_target: int = PACK_TARGET_BYTES,
    ) -> Repository:
        if store.exists(CONFIG):
            raise RepositoryExists("a repository already exists in this store")
        params = chunker or ChunkerParams()
        if params.seed == 0:
            params = ChunkerParams(
                params.min_size, params.avg_size, params.max_size, secrets.randbits(62) | 1
            )
        cfg = RepoConfig(secrets.token_hex(16), datetime.now(UTC), params, pack_target)
        crypto = Crypto(derive_subkeys(dek))
        sealed = crypto.seal_object(ObjectKind.CONFIG, _config_json(cfg))
        doc = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "sealed": base64.b64encode(sealed).decode(),
        }
        store.put(CONFIG, json.dumps(doc, indent=1).encode())
        return cls(store, crypto, cfg)

    @classmethod
    def open(
        cls, store: Store, dek: bytes, *, cache_dir: str | os.PathLike[str] | None = None
    ) -> Repository:
        try:
            raw = store.get(CONFIG)
        except ObjectNotFound:
            raise RepositoryNotFound("no repository in this store") from None
        try:
            doc = json.loads(raw)
            fmt, version, sealed = doc["format"], doc["version"], base64.b64decode(doc["sealed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UnsupportedFormat(f"config is not a fleetkeep repository ({exc})") from exc
        if fmt != FORMAT_NAME or version != FORMAT_VERSION:
            raise UnsupportedFormat(f"unsupported repository format {fmt!r} version {version!r}")
        crypto = Crypto(derive_subkeys(dek))
        try:
            plain = crypto.open_object(ObjectKind.CONFIG, sealed, CONFIG)
        except IntegrityError:
            raise WrongKey("the data key does not open this repository") from None
        try:
            d = json.loads(plain)
            c = d["chunker"]
            cfg = RepoConfig(
                repository_id=str(d["repository_id"]),
                created=datetime.fromisoformat(d["created"]),
                chunker=ChunkerParams(
                    int(c["min_size"]), int(c["avg_size"]), int(c["max_size"]), int(c["seed"])
                ),
                pack_target=int(d["pack_target"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"config: malformed ({exc})") from exc
        repo = cls(store, crypto, cfg, Path(cache_dir) if cache_dir is not None else None)
        repo.load_index()
        return repo

    # -- index -------------------------------------------------------------------------

    def load_index(self) -> None:
        index = Index()
        names = [o.name for o in self.store.list("index/")]
        for name in names:
            for pack_id, entries in self.read_index_file(name):
                index.add_pack(pack_id, entries)
        self.index = index
        self.index_files = names
        self._forget_cached("index", names)

    def _forget_cached(self, folder: str, names: list[str]) -> None:
        """Drop local copies of objects the store no longer lists."""
        if self.object_cache is None or not (self.object_cache / folder).is_dir():
            return
        listed = {n.rpartition("/")[2] for n in names}
        for local in (self.object_cache / folder).iterdir():
            if local.name not in listed:
                local.unlink(missing_ok=True)

    def read_index_file(self, name: str) -> list[tuple[str, list[PackEntry]]]:
        return list(decode_index(self.load_object(ObjectKind.INDEX, name), name))

    def write_index_file(self, packs: Iterable[tuple[str, list[PackEntry]]]) -> str:
        return self.save_object(ObjectKind.INDEX, "index", encode_index(packs))

    def read_pack_header(self, pack_id: str) -> list[PackEntry]:
        name = pack_name(pack_id)
        n = header_length(self.store.get_range(name, -TRAILER_BYTES, TRAILER_BYTES))
        sealed = self.store.get_range(name, -(TRAILER_BYTES + n), n)
        if len(sealed) != n:
            raise IntegrityError(f"{name}: header length {n} exceeds the pack")
        return read_header(self.crypto, sealed, name)

    # -- objects and blobs -------------------------------------------------------------

    def save_object(self, kind: ObjectKind, folder: str, plaintext: bytes) -> str:
        sealed = self.crypto.seal_object(kind, plaintext)
        name = f"{folder}/{content_name(sealed)}"
        self.store.put(name, sealed)
        return name

    def load_object(self, kind: ObjectKind, name: str) -> bytes:
        """Fetch (through the local cache, if any), verify against the name, decrypt."""
        expected = name.rpartition("/")[2]
        local = self.object_cache / name if self.object_cache is not None else None
        sealed = None
        if local is not None and local.is_file():
            sealed = local.read_bytes()
            if content_name(sealed) != expected:
                sealed = None  # a damaged cache copy: fetch the object again
        if sealed is None:
            sealed = self.store.get(name)
            if content_name(sealed) != expected:
                raise IntegrityError(f"{name}: content does not match its name")
            if local is not None:
                local.parent.mkdir(parents=True, exist_ok=True)
                tmp = local.with_name(f".{local.name}.tmp")
                tmp.write_bytes(sealed)
                os.replace(tmp, local)
        return self.crypto.open_object(kind, sealed, name)

    def read_blob(
        self, blob_id: bytes, blob_type: BlobType = BlobType.DATA, *, verify_id: bool = True
    ) -> bytes:
        loc = self.index.get(blob_id)
        if loc is None:
            raise ObjectNotFound(f"blob {blob_id.hex()} is not in the index")
        if loc.blob_type != blob_type:
            raise IntegrityError(f"blob {blob_id.hex()} has type {loc.blob_type.name}")
        sealed = self.store.get_range(pack_name(loc.pack_id), loc.offset, loc.length)
        return self.crypto.open_blob(blob_type, blob_id, sealed, verify_id=verify_id)

    def read_tree(self, tree_id: bytes) -> list[Node]:
        return decode_tree(self.read_blob(tree_id, BlobType.TREE), f"tree {tree_id.hex()}")

    # -- snapshots ---------------------------------------------------------------------

    def list_snapshots(self) -> list[Snapshot]:
        names = [o.name for o in self.store.list("snapshots/")]
        snaps = [self.load_snapshot(n) for n in names]
        self._forget_cached("snapshots", names)
        return sorted(snaps, key=lambda s: s.time)

    def load_snapshot(self, name: str) -> Snapshot:
        raw = self.load_object(ObjectKind.SNAPSHOT, name)
        return Snapshot.from_json(name.rpartition("/")[2], raw)

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        """Find a snapshot by its id or a unique prefix of it (at least 4 hex digits)."""
        if len(snapshot_id) < 4:
            raise SnapshotNotFound(f"snapshot id {snapshot_id!r} is too short")
        hits = [o.name for o in self.store.list(f"snapshots/{snapshot_id}")]
        if len(hits) != 1:
            raise SnapshotNotFound(
                f"snapshot {snapshot_id!r} "
                + ("not found" if not hits else f"is ambiguous ({len(hits)} matches)")
            )
        return self.load_snapshot(hits[0])

    # -- operations (each lives in its own module) ---------------------------------------

    def backup(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        device: str,
        hostname: str | None = None,
        excludes: Iterable[str] = (),
        cache_dir: str | os.PathLike[str] | None = None,
        progress_cb: ProgressCallback | None = None,
        workers: int | None = None,
    ) -> Snapshot:
        """Back up ``paths``; the snapshot is written only after everything it references."""
        from fleetkeep.backup.archiver import Archiver

        archiver = Archiver(
            self,
            device=device,
            hostname=hostname,
            excludes=excludes,
            cache_dir=Path(cache_dir) if cache_dir is not None else self.cache_dir,
            progress_cb=progress_cb,
            workers=workers,
        )
        return archiver.run(paths)

    def restore(
        self,
        snapshot: Snapshot | str,
        target: str | os.PathLike[str],
        include_paths: Iterable[str] | None = None,
        *,
        workers: int | None = None,
    ) -> RestoreStats:
        from fleetkeep.backup.restorer import Restorer

        snap = snapshot if isinstance(snapshot, Snapshot) else self.get_snapshot(snapshot)
        return Restorer(self, workers=workers).run(snap, target, include_paths)

    def check(self, read_data: bool = False) -> CheckReport:
        from fleetkeep.backup.check import Checker

        return Checker(self, read_data=read_data).run()

    def forget(
        self, policy: RetentionPolicy, *, now: datetime | None = None, dry_run: bool = False
    ) -> list[Snapshot]:
        from fleetkeep.backup.prune import forget

        return forget(self, policy, now=now, dry_run=dry_run)

    def prune(
        self,
        *,
        repack_threshold: float | None = None,
        grace: timedelta | None = None,
        now: datetime | None = None,
    ) -> PruneReport:
        from fleetkeep.backup import prune as gc

        return gc.prune(
            self,
            repack_threshold=gc.DEFAULT_REPACK_THRESHOLD
            if repack_threshold is None
            else repack_threshold,
            grace=gc.DEFAULT_GRACE if grace is None else grace,
            now=now,
        )

    def save_snapshot(self, snap: Snapshot) -> Snapshot:
        name = self.save_object(ObjectKind.SNAPSHOT, "snapshots", snap.to_json())
        snap.id = name.rpartition("/")[2]
        return snap


class BlobSink:
    """Deduplicates, seals and packs blobs from many threads; uploads full packs.

    ``reserve`` is the one place that decides a blob is new, so two threads never store the
    same chunk twice. Packs are written before any index names them.
    """

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self._lock = threading.Lock()
        self._reserved: set[bytes] = set()
        self._writers: dict[BlobType, PackWriter] = {}
        # A pack buffer holds the target size plus room for the blob that crosses it; written
        # packs' buffers wait here for reuse (at most _SPARE_BUFFERS, to bound memory).
        self._buffer_bytes = -(-(repo.config.pack_target + _PACK_SLACK) // mmap.PAGESIZE) * (
            mmap.PAGESIZE
        )
        self._spare: list[mmap.mmap] = []
        self._unindexed: list[tuple[str, list[PackEntry]]] = []
        self.written_packs: list[str] = []
        self._uploader = ThreadPoolExecutor(
            max_workers=_UPLOADS_IN_FLIGHT, thread_name_prefix="pack-upload"
        )
        self._upload_slots = threading.Semaphore(_UPLOADS_IN_FLIGHT)
        self._uploads: list[Future[None]] = []
        self.new_blobs = 0
        self.new_bytes = 0
        self.stored_bytes = 0

    def reserve(self, blob_id: bytes) -> bool:
        with self._lock:
            if blob_id in self._reserved or blob_id in self._repo.index:
                return False
            self._reserved.add(blob_id)
            return True

    def put(self, blob_type: BlobType, blob_id: bytes, data: bytes | memoryview) -> None:
        """Store a blob already reserved by this caller. Compressing and sealing happen
        outside the lock (the slow, GIL-free part); the lock only reserves pack space."""
        mode, payload = compress(data)
        writer, out = self._place(blob_type, blob_id, SEAL_OVERHEAD + len(payload), len(data))
        try:
            self._repo.crypto.seal_into(blob_type, blob_id, mode, payload, out)
        except BaseException:
            self._filled(writer, failed=blob_id)
            raise
        self._filled(writer)

    def put_sealed(self, blob_type: BlobType, blob_id: bytes, sealed: bytes) -> None:
        """Repack an already-sealed blob (prune): the seal is bound to the id, not the pack."""
        writer, out = self._place(blob_type, blob_id, len(sealed), 0)
        out[:] = sealed
        self._filled(writer)

    def _place(
        self, blob_type: BlobType, blob_id: bytes, length: int, new: int
    ) -> tuple[PackWriter, memoryview]:
        """Reserve ``length`` bytes for a blob in the current pack of its type, starting a new
        pack when it does not fit; a pack that reached the target is closed."""
        closed: PackWriter | None = None
        with self._lock:
            current = self._writers.get(blob_type)
            out = current.reserve(blob_type, blob_id, length) if current is not None else None
            if current is not None and out is not None:
                writer = current
            else:
                if current is not None and self._close(current):
                    closed = current
                writer = self._writers[blob_type] = PackWriter(self._buffer(length))
                out = writer.reserve(blob_type, blob_id, length)
                assert out is not None
            if new:
                self.new_blobs += 1
                self.new_bytes += new
            if writer.size >= self._repo.config.pack_target:
                del self._writers[blob_type]
                writer.closed = True  # uploaded once this blob (and any other) is sealed
        if closed is not None:
            self._upload(closed)
        return writer, out

    def _filled(self, writer: PackWriter, failed: bytes | None = None) -> None:
        with self._lock:
            if failed is not None:
                writer.drop(failed)
                self._reserved.discard(failed)
            writer.writing -= 1
            ready = writer.closed and writer.writing == 0
        if ready:
            self._upload(writer)

    @staticmethod
    def _close(writer: PackWriter) -> bool:
        """Close a pack (under the lock); True when it is ready to upload now."""
        writer.closed = True
        return writer.writing == 0

    def _buffer(self, at_least: int) -> mmap.mmap:
        """A spare pack buffer, or a new anonymous mapping (larger for an oversized blob)."""
        if at_least <= self._buffer_bytes:
            if self._spare:
                return self._spare.pop()
            return mmap.mmap(-1, self._buffer_bytes, mmap.MAP_PRIVATE)
        return mmap.mmap(-1, at_least, mmap.MAP_PRIVATE)

    def store(self, blob_type: BlobType, data: bytes) -> bytes:
        blob_id = self._repo.crypto.blob_id(data)
        if self.reserve(blob_id):
            self.put(blob_type, blob_id, data)
        return blob_id

    def _upload(self, writer: PackWriter) -> None:
        """Hand a full pack to the uploader threads, so chunking goes on during the write and
        its fsync; at most ``_UPLOADS_IN_FLIGHT`` packs wait in memory."""
        self._upload_slots.acquire()
        fut = self._uploader.submit(self._write_pack, writer)
        fut.add_done_callback(lambda _: self._upload_slots.release())
        with self._lock:
            self._uploads.append(fut)

    def _write_pack(self, writer: PackWriter) -> None:
        if not writer.entries:  # every blob of it failed to seal
            return
        pack_id, parts = writer.finish(self._repo.crypto)
        self._repo.store.put_parts(pack_name(pack_id), parts)
        stored = sum(len(p) for p in parts)
        del parts
        with self._lock:
            self.stored_bytes += stored
            self.written_packs.append(pack_id)
            self._unindexed.append((pack_id, writer.entries))
            self._repo.index.add_pack(pack_id, writer.entries)
            if len(writer.buffer) == self._buffer_bytes and len(self._spare) < _SPARE_BUFFERS:
                self._spare.append(writer.buffer)
            batch = None
            if len(self._unindexed) >= _INDEX_EVERY_PACKS:
                batch, self._unindexed = self._unindexed, []
        if batch:
            self._repo.write_index_file(batch)

    def flush(self) -> list[str]:
        """Upload partial packs, wait for all uploads and index them; returns the new index
        files. This finishes the sink; every ``put`` must have returned."""
        with self._lock:
            pending = [w for w in self._writers.values() if self._close(w)]
            self._writers = {}
        for w in pending:
            self._upload(w)
        with self._lock:
            uploads, self._uploads = self._uploads, []
        try:
            for fut in uploads:
                fut.result()
        finally:
            self._uploader.shutdown(wait=True)
        with self._lock:
            batch, self._unindexed = self._unindexed, []
        return [self._repo.write_index_file(batch)] if batch else []
