"""A store on the local filesystem: temp file + fsync + rename, so objects appear whole."""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from fleetkeep.backup.errors import ObjectNotFound
from fleetkeep.backup.stores.base import ObjectInfo, Part, Store, check_name

_TMP_PREFIX = ".tmp-"


class FilesystemStore(Store):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def put(self, name: str, data: bytes | bytearray) -> None:
        self.put_parts(name, [data])

    def put_parts(self, name: str, parts: Sequence[Part]) -> None:
        path = self._path(name)
        parent = path.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            rest = _write_direct(tmp, parts)
            if rest is not parts:
                os.lseek(fd, 0, os.SEEK_END)
            _write_all(fd, rest)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"object {name} not found") from None

    def _open(self, name: str) -> int:
        try:
            return os.open(self._path(name), os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectNotFound(f"object {name} not found") from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        fd = self._open(name)
        try:
            if offset < 0:
                offset = max(0, os.fstat(fd).st_size + offset)
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def get_range_into(self, name: str, offset: int, buf: memoryview) -> None:
        fd = self._open(name)
        try:
            done = 0
            while done < len(buf):
                n = os.preadv(fd, [buf[done:]], offset + done)
                if n == 0:
                    raise ObjectNotFound(f"object {name} is shorter than {offset + len(buf)} bytes")
                done += n
        finally:
            os.close(fd)

    def prefetch(self, name: str) -> None:
        """Ask the kernel to read the whole object ahead, in the background."""
        try:
            fd = os.open(self._path(name), os.O_RDONLY)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root
        folder = prefix.rpartition("/")[0]
        for dirpath, dirnames, filenames in os.walk(base / folder if folder else base):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, base)
            for filename in sorted(filenames):
                if filename.startswith(_TMP_PREFIX):
                    continue
                name = filename if rel_dir == "." else f"{rel_dir}/{filename}"
                if not name.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, filename))
                except FileNotFoundError:
                    continue
                yield ObjectInfo(name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)


_IOV_MAX = 1024
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_DIRECT_BLOCK = 4096
_DIRECT_MIN = 1024 * 1024


def _write_direct(path: Path, parts: Sequence[Part]) -> Sequence[Part]:
    """Write the block-aligned start of a large first part (a pack's blobs, which sit in a
    page-aligned mapping) with O_DIRECT; return what is left to write the usual way.

    Why: a buffered write copies every byte into the page cache (measured: 8 % of a 1 GB
    backup's CPU), and a new pack is not read again soon. Where O_DIRECT is refused (tmpfs,
    a misaligned buffer: EINVAL) the whole object is written the usual way."""
    first = parts[0] if parts else b""
    if not _O_DIRECT or not isinstance(first, memoryview) or len(first) < _DIRECT_MIN:
        return parts
    aligned = len(first) - len(first) % _DIRECT_BLOCK
    try:
        fd = os.open(path, os.O_WRONLY | _O_DIRECT)
    except OSError:
        return parts
    try:
        done = 0
        while done < aligned:
            n = os.pwritev(fd, [first[done:aligned]], done)
            if n <= 0:
                return parts
            done += n
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return parts  # written again from the start, buffered (the other descriptor is at 0)
    finally:
        os.close(fd)
    return [first[aligned:], *parts[1:]]


def _write_all(fd: int, parts: Sequence[Part]) -> None:
    """Gathered writes of all parts (usually one call), resuming after short writes."""
    pending: list[Part | memoryview] = [p for p in parts if len(p)]
    while pending:
        batch = pending[:_IOV_MAX]
        written = os.writev(fd, batch)
        done = 0
        while done < len(batch) and written >= len(batch[done]):
            written -= len(batch[done])
            done += 1
        pending = pending[done:]
        if written:
            pending[0] = memoryview(pending[0])[written:]
