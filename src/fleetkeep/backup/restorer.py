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
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fleetkeep.backup.errors import UnsafePath
from fleetkeep.backup.pack import pack_name
from fleetkeep.backup.repository import Repository, Snapshot
from fleetkeep.backup.tree import Node

_MAX_DEPTH = 512
_WINDOW = 4 * 1024 * 1024
_IN_FLIGHT_FILES = 32
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    warnings: int = 0


RestoreProgress = Callable[[RestoreStats], None]


def _split(path: str) -> tuple[bytes, ...]:
    return tuple(c for c in os.fsencode(path).split(b"/") if c and c != b".")


class Restorer:
    def __init__(self, repo: Repository, *, workers: int | None = None) -> None:
        self.repo = repo
        self.stats = RestoreStats()
        # Two writers keep both cores busy; more only add GIL hand-offs (measured: 4 threads
        # made a 20,000-file restore 1.7x slower).
        self._workers = workers or 2
        self._window = threading.local()
        self._uid, self._gid = os.geteuid(), os.getegid()
        self._lock = threading.Lock()
        self._is_root = os.geteuid() == 0

    def run(
        self,
        snap: Snapshot,
        target: str | os.PathLike[str],
        include_paths: Iterable[str] | None = None,
    ) -> RestoreStats:
        includes = [_split(p) for p in include_paths] if include_paths is not None else None
        Path(target).mkdir(parents=True, exist_ok=True)
        root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        pool = ThreadPoolExecutor(max_workers=self._workers)
        slots = threading.Semaphore(_IN_FLIGHT_FILES)
        futures: list[Future[None]] = []
        try:
            self._restore_tree(root_fd, snap.tree, (), includes, pool, slots, futures, 0)
        finally:
            pool.shutdown(wait=True)
            os.close(root_fd)
        for fut in futures:
            fut.result()
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
        pool: ThreadPoolExecutor,
        slots: threading.Semaphore,
        futures: list[Future[None]],
        depth: int,
    ) -> None:
        if depth > _MAX_DEPTH:
            raise UnsafePath(f"snapshot tree deeper than {_MAX_DEPTH} levels")
        for node in self.repo.read_tree(tree_id):
            child = (*path, node.name)
            wanted, whole = self._selected(child, includes)
            if not wanted:
                continue
            if node.type == "dir":
                fd = self._open_dir(dir_fd, node.name, child)
                try:
                    assert node.subtree is not None
                    self._restore_tree(
                        fd,
                        node.subtree,
                        child,
                        None if whole else includes,
                        pool,
                        slots,
                        futures,
                        depth + 1,
                    )
                    self._apply_meta(fd, node)
                finally:
                    os.close(fd)
                self.stats.dirs += 1
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
                try:
                    fd = os.open(node.name, _FILE_FLAGS, 0o600, dir_fd=dir_fd)
                except FileExistsError:
                    self._replace(dir_fd, node.name)
                    fd = os.open(node.name, _FILE_FLAGS, 0o600, dir_fd=dir_fd)
                slots.acquire()
                fut = pool.submit(self._write_file, fd, node)
                fut.add_done_callback(lambda _: slots.release())
                futures.append(fut)

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

    def _write_file(self, fd: int, node: Node) -> None:
        try:
            offset = written = 0
            for blob_id in node.content:
                data = self._read_blob(blob_id)
                if not (data[:1] == b"\0" and data.count(0) == len(data)):
                    view = memoryview(data)
                    pos = offset
                    while view:
                        n = os.pwrite(fd, view, pos)
                        view, pos = view[n:], pos + n
                    written = pos
                offset += len(data)
            if written < offset:  # the file ends in a hole
                os.ftruncate(fd, offset)
            self._apply_meta(fd, node)
        finally:
            os.close(fd)
        with self._lock:
            self.stats.files += 1
            self.stats.bytes += offset

    def _read_blob(self, blob_id: bytes) -> bytes:
        """Read through a per-thread window of the pack: small files restored in backup order
        sit next to each other, so one read serves many blobs."""
        loc = self.repo.index.get(blob_id)
        if loc is None or loc.length > _WINDOW // 4:
            return self.repo.read_blob(blob_id)
        win: tuple[str, int, bytes] | None = getattr(self._window, "cur", None)
        if (
            win is None
            or win[0] != loc.pack_id
            or not (win[1] <= loc.offset and loc.offset + loc.length <= win[1] + len(win[2]))
        ):
            data = self.repo.store.get_range(pack_name(loc.pack_id), loc.offset, _WINDOW)
            win = self._window.cur = (loc.pack_id, loc.offset, data)
        start = loc.offset - win[1]
        sealed = win[2][start : start + loc.length]
        return self.repo.crypto.open_blob(loc.blob_type, blob_id, sealed)

    def _apply_meta(self, fd: int, node: Node) -> None:
        for name, value in node.xattrs.items():
            try:
                os.setxattr(fd, name, value)
            except OSError:
                with self._lock:
                    self.stats.warnings += 1
        if self._is_root and (node.uid, node.gid) != (self._uid, self._gid):
            os.fchown(fd, node.uid, node.gid)
        os.fchmod(fd, node.mode)
        os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
