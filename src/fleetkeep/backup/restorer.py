"""Restore a snapshot into a directory without ever writing outside it.

Every directory is opened relative to its parent's descriptor with ``O_NOFOLLOW``, every file
is created with ``O_EXCL`` after unlinking what was there, and tree names are validated when
decoded (``tree.py``). A crafted tree naming ``..``, ``/`` or a symlink-then-directory pair
therefore fails with ``UnsafePath`` instead of escaping. Chunks that are all zeros become
holes, so sparse files stay sparse.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fleetkeep.backup.errors import UnsafePath
from fleetkeep.backup.pack import pack_name
from fleetkeep.backup.repository import Repository, Snapshot
from fleetkeep.backup.slots import Slots
from fleetkeep.backup.tree import Node

_MAX_DEPTH = 512
_WINDOW = 1024 * 1024
_WINDOWS_KEPT = 16
# Directories waiting for their files each hold an open descriptor: cap them.
_MAX_PENDING_DIRS = 256
_IN_FLIGHT_TASKS = 16
# Small files are restored in batches, one pool task each (a task costs as much GIL-held
# Python as writing a small file); a file of at least _BATCH_BYTES has its own task.
_BATCH_FILES = 32
_BATCH_BYTES = 1024 * 1024
# Packs hinted to the store ahead of use (restore order follows backup order, and so the
# order packs were written in): the store can read them while earlier ones are written out.
_PREFETCH_PACKS = 2
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


@dataclass
class _PendingDir:
    fd: int
    node: Node
    files: list[Future[None]]


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    warnings: int = 0


RestoreProgress = Callable[[RestoreStats], None]


_ZEROS = bytes(64 * 1024)


def _all_zero(data: memoryview) -> bool:
    """Whether a blob is all zero bytes (it becomes a hole). Bytes compare with memcmp, views
    element by element, so slices are copied out; the first non-zero slice ends it."""
    step = len(_ZEROS)
    for i in range(0, len(data), step):
        part = data[i : i + step].tobytes()
        if part != _ZEROS[: len(part)]:
            return False
    return True


def _split(path: str) -> tuple[bytes, ...]:
    return tuple(c for c in os.fsencode(path).split(b"/") if c and c != b".")


class Restorer:
    def __init__(self, repo: Repository, *, workers: int | None = None) -> None:
        self.repo = repo
        self.stats = RestoreStats()
        # Two writers keep both cores busy; more only add GIL hand-offs (measured: 4 threads
        # made a 20,000-file restore 1.7x slower).
        self._workers = workers or 2
        self._windows: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._uid, self._gid = os.geteuid(), os.getegid()
        self._lock = threading.Lock()
        self._is_root = os.geteuid() == 0
        # Files are created with their final mode when the umask leaves it intact, which
        # saves a chmod per file; the umask is read once (setting it is process-wide).
        self._umask = os.umask(0o077)
        os.umask(self._umask)
        self._buffers = threading.local()
        self._prefetched: set[str] = set()
        self._pack_order = {p: i for i, p in enumerate(repo.index.packs())}
        self._packs_in_order = list(self._pack_order)

    def run(
        self,
        snap: Snapshot,
        target: str | os.PathLike[str],
        include_paths: Iterable[str] | None = None,
    ) -> RestoreStats:
        includes = [_split(p) for p in include_paths] if include_paths is not None else None
        Path(target).mkdir(parents=True, exist_ok=True)
        root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        self._pool = ThreadPoolExecutor(max_workers=self._workers)
        self._slots = Slots(_IN_FLIGHT_TASKS)
        self._pending: deque[_PendingDir] = deque()
        try:
            top = self._restore_tree(root_fd, snap.tree, (), includes, 0)
            self._finish_dirs(block=True)
            for f in top:
                f.result()
        finally:
            self._pool.shutdown(wait=True)
            for pending in self._pending:
                os.close(pending.fd)
            os.close(root_fd)
        return self.stats

    def _selected(
        self, path: tuple[bytes, ...], includes: list[tuple[bytes, ...]] | None
    ) -> tuple[bool, bool]:
        """(restore this node, restore everything under it)."""
        if includes is None:
            return True, True
        full = any(path[: len(i)] == i for i in includes)
        partial = any(i[: len(path)] == path for i in includes)
        return full or partial, full

    def _restore_tree(
        self,
        dir_fd: int,
        tree_id: bytes,
        path: tuple[bytes, ...],
        includes: list[tuple[bytes, ...]] | None,
        depth: int,
    ) -> list[Future[None]]:
        """Create this directory's entries; files are created and written by the pool.
        Returns the futures of this directory's own files."""
        if depth > _MAX_DEPTH:
            raise UnsafePath(f"snapshot tree deeper than {_MAX_DEPTH} levels")
        files: list[Future[None]] = []
        batch: list[Node] = []
        batch_bytes = 0
        for node in self.repo.read_tree(tree_id):
            child = (*path, node.name)
            wanted, whole = self._selected(child, includes)
            if not wanted:
                continue
            if node.type == "dir":
                fd = self._open_dir(dir_fd, node.name, child)
                try:
                    assert node.subtree is not None
                    own = self._restore_tree(
                        fd, node.subtree, child, None if whole else includes, depth + 1
                    )
                except BaseException:
                    os.close(fd)
                    raise
                # Post-order: subdirectories were queued before this one.
                self._pending.append(_PendingDir(fd, node, own))
                self._finish_dirs(block=len(self._pending) > _MAX_PENDING_DIRS)
            elif node.type == "symlink":
                self._replace(dir_fd, node.name)
                assert node.target is not None
                os.symlink(node.target, node.name, dir_fd=dir_fd)
                if self._is_root:
                    os.chown(node.name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
                os.utime(
                    node.name,
                    ns=(node.mtime_ns, node.mtime_ns),
                    dir_fd=dir_fd,
                    follow_symlinks=False,
                )
                self.stats.symlinks += 1
            elif whole or includes is None or child in includes:
                if node.size >= _BATCH_BYTES:
                    files.append(self._submit(dir_fd, [node]))
                    continue
                batch.append(node)
                batch_bytes += node.size
                if len(batch) >= _BATCH_FILES or batch_bytes >= _BATCH_BYTES:
                    files.append(self._submit(dir_fd, batch))
                    batch, batch_bytes = [], 0
        if batch:
            files.append(self._submit(dir_fd, batch))
        return files

    def _submit(self, dir_fd: int, nodes: list[Node]) -> Future[None]:
        return self._slots.submit(self._pool, self._restore_files, dir_fd, nodes)

    def _restore_files(self, dir_fd: int, nodes: list[Node]) -> None:
        size = 0
        for node in nodes:
            size += self._restore_file(dir_fd, node)
        with self._lock:
            self.stats.files += len(nodes)
            self.stats.bytes += size

    def _finish_dirs(self, *, block: bool) -> None:
        """Apply directory metadata once all its files exist (creating them changes mtime)."""
        while self._pending:
            head = self._pending[0]
            if not block and not all(f.done() for f in head.files):
                return
            self._pending.popleft()
            try:
                for f in head.files:
                    f.result()
                self._apply_meta(head.fd, head.node)
            finally:
                os.close(head.fd)
            self.stats.dirs += 1

    def _open_dir(self, dir_fd: int, name: bytes, path: tuple[bytes, ...]) -> int:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePath(
                    f"{b'/'.join(path)!r} exists in the target and is not a directory"
                ) from None
            raise

    def _replace(self, dir_fd: int, name: bytes) -> None:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise UnsafePath(f"{name!r} is a directory in the target") from None

    def _restore_file(self, dir_fd: int, node: Node) -> int:
        """Write one file; returns its size."""
        mode = node.mode if not node.mode & (self._umask | ~0o777) else 0o600
        try:
            fd = os.open(node.name, _FILE_FLAGS, mode, dir_fd=dir_fd)
        except FileExistsError:
            self._replace(dir_fd, node.name)
            fd = os.open(node.name, _FILE_FLAGS, mode, dir_fd=dir_fd)
        try:
            offset = written = 0
            for blob_id in node.content:
                data = self._read_blob(blob_id)
                n = len(data)
                if n and not (data[0] == 0 and _all_zero(data)):
                    view, pos = data, offset
                    while view:
                        k = os.pwrite(fd, view, pos)
                        view, pos = view[k:], pos + k
                    written = offset + n
                offset += n
            if written < offset:  # the file ends in a hole
                os.ftruncate(fd, offset)
            self._apply_meta(fd, node, chmod=mode != node.mode)
        finally:
            os.close(fd)
        return offset

    def _read_blob(self, blob_id: bytes) -> memoryview:
        """The blob's plaintext, valid until this thread reads its next blob.

        Small blobs are read through aligned pack windows shared by all writers: files
        restored in backup order sit next to each other, so one read serves many blobs.
        Larger ones are read and decrypted into this thread's reused buffers."""
        loc = self.repo.index.get(blob_id)
        if loc is None:
            return memoryview(self.repo.read_blob(blob_id, verify_id=False))
        self._prefetch(loc.pack_id)
        crypto = self.repo.crypto
        first, last = loc.offset // _WINDOW, (loc.offset + loc.length - 1) // _WINDOW
        if first != last:
            sealed = self._buffer("sealed", loc.length)
            self.repo.store.get_range_into(pack_name(loc.pack_id), loc.offset, sealed)
            return crypto.open_blob_into(
                loc.blob_type, blob_id, sealed, self._buffer("plain", loc.length)
            )
        key = (loc.pack_id, first)
        with self._lock:
            window = self._windows.get(key)
            if window is not None:
                self._windows.move_to_end(key)
        if window is None:
            window = self.repo.store.get_range(pack_name(loc.pack_id), first * _WINDOW, _WINDOW)
            with self._lock:
                self._windows[key] = window
                while len(self._windows) > _WINDOWS_KEPT:
                    self._windows.popitem(last=False)
        start = loc.offset - first * _WINDOW
        sealed_view = memoryview(window)[start : start + loc.length]
        return crypto.open_blob_into(
            loc.blob_type, blob_id, sealed_view, self._buffer("plain", loc.length)
        )

    def _buffer(self, which: str, length: int) -> memoryview:
        buf: bytearray | None = getattr(self._buffers, which, None)
        if buf is None or len(buf) < length:
            buf = bytearray(max(length, _WINDOW))
            setattr(self._buffers, which, buf)
        return memoryview(buf)[:length]

    def _prefetch(self, pack_id: str) -> None:
        """Hint the pack in use and the next ones written after it (once each)."""
        if pack_id in self._prefetched:
            return
        at = self._pack_order.get(pack_id)
        upcoming = [pack_id] if at is None else self._packs_in_order[at : at + 1 + _PREFETCH_PACKS]
        with self._lock:
            fresh = [p for p in upcoming if p not in self._prefetched]
            self._prefetched.update(fresh)
        for p in fresh:
            self.repo.store.prefetch(pack_name(p))

    def _apply_meta(self, fd: int, node: Node, *, chmod: bool = True) -> None:
        for name, value in node.xattrs.items():
            try:
                os.setxattr(fd, name, value)
            except OSError:
                with self._lock:
                    self.stats.warnings += 1
        if self._is_root and (node.uid, node.gid) != (self._uid, self._gid):
            os.fchown(fd, node.uid, node.gid)
        if chmod:
            os.fchmod(fd, node.mode)
        os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
