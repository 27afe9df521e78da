"""``check``: prove every snapshot can be restored, or say exactly what cannot and why.

Without ``read_data`` it checks structure: every tree decrypts, every referenced blob is
indexed, every indexed pack exists. With ``read_data`` it also reads every pack, checks its
name (the BLAKE3 of its bytes), decrypts every blob and verifies its keyed hash. Damage is
reported per snapshot and file path, naming the pack and blob.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fleetkeep.backup.crypto import content_name
from fleetkeep.backup.errors import BackupError, IntegrityError, ObjectNotFound
from fleetkeep.backup.pack import pack_name, parse_pack
from fleetkeep.backup.repository import Repository


@dataclass(frozen=True)
class Damage:
    kind: str
    detail: str
    snapshot: str | None = None
    path: str | None = None
    pack: str | None = None
    blob: str | None = None


@dataclass
class CheckReport:
    snapshots: int = 0
    trees: int = 0
    files: int = 0
    packs: int = 0
    packs_read: int = 0
    unindexed_packs: list[str] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage


# (kind, path relative to the tree, pack, blob, detail) found below one tree.
_Finding = tuple[str, str, str | None, str | None, str]


class Checker:
    def __init__(self, repo: Repository, *, read_data: bool, workers: int = 2) -> None:
        self.repo = repo
        self.read_data = read_data
        self.workers = workers
        self.report = CheckReport()
        self._bad_blobs: dict[bytes, tuple[str, str]] = {}
        self._missing_packs: set[str] = set()
        self._trees: dict[bytes, list[_Finding]] = {}

    def run(self) -> CheckReport:
        repo = self.repo
        repo.load_index()
        in_store = {o.name.rpartition("/")[2] for o in repo.store.list("packs/")}
        indexed = repo.index.packs()
        self.report.packs = len(indexed)
        self._missing_packs = {p for p in indexed if p not in in_store}
        for p in sorted(self._missing_packs):
            self.report.damage.append(
                Damage("missing_pack", "indexed pack is not in the store", pack=p)
            )
        self.report.unindexed_packs = sorted(in_store - set(indexed))
        if self.read_data:
            present = [p for p in indexed if p in in_store]
            with ThreadPoolExecutor(self.workers) as pool:
                for damage in pool.map(self._read_pack, present):
                    self.report.damage.extend(damage)
            self.report.packs_read = len(present)
        for obj in repo.store.list("snapshots/"):
            sid = obj.name.rpartition("/")[2]
            try:
                snap = repo.load_snapshot(obj.name)
            except BackupError as exc:
                self.report.damage.append(Damage("bad_snapshot", exc.detail, snapshot=sid))
                continue
            self.report.snapshots += 1
            for kind, path, pack, blob, detail in self._tree(snap.tree):
                self.report.damage.append(
                    Damage(kind, detail, snapshot=sid, path="/" + path, pack=pack, blob=blob)
                )
        return self.report

    def _read_pack(self, pack_id: str) -> list[Damage]:
        """Verify one pack end to end; record its bad blobs for the tree walk."""
        out: list[Damage] = []
        try:
            data = self.repo.store.get(pack_name(pack_id))
        except ObjectNotFound:
            return [Damage("missing_pack", "pack vanished during check", pack=pack_id)]
        if content_name(data) != pack_id:
            out.append(
                Damage("pack_hash_mismatch", "pack bytes do not match its name", pack=pack_id)
            )
        try:
            header = {e.blob_id: e for e in parse_pack(self.repo.crypto, data, pack_id)}
        except IntegrityError as exc:
            out.append(Damage("bad_pack_header", exc.detail, pack=pack_id))
            header = {}
        for e in self.repo.index.pack_entries[pack_id]:
            h = header.get(e.blob_id)
            if header and (h is None or (h.offset, h.length) != (e.offset, e.length)):
                out.append(
                    Damage(
                        "index_mismatch",
                        "index and pack header disagree",
                        pack=pack_id,
                        blob=e.blob_id.hex(),
                    )
                )
            try:
                sealed = data[e.offset : e.offset + e.length]
                self.repo.crypto.open_blob(e.blob_type, e.blob_id, sealed)
            except IntegrityError as exc:
                self._bad_blobs[e.blob_id] = (pack_id, exc.detail)
                out.append(Damage("bad_blob", exc.detail, pack=pack_id, blob=e.blob_id.hex()))
        return out

    def _blob_problem(self, blob_id: bytes) -> tuple[str, str | None, str] | None:
        loc = self.repo.index.get(blob_id)
        if loc is None:
            return "missing_blob", None, "blob is not in any indexed pack"
        if loc.pack_id in self._missing_packs:
            return "missing_pack", loc.pack_id, "the pack holding this blob is gone"
        bad = self._bad_blobs.get(blob_id)
        if bad is not None:
            return "bad_blob", bad[0], bad[1]
        return None

    def _tree(self, tree_id: bytes) -> list[_Finding]:
        """Findings below a tree, memoized: snapshots share most of their trees."""
        memo = self._trees.get(tree_id)
        if memo is not None:
            return memo
        found: list[_Finding] = []
        problem = self._blob_problem(tree_id)
        if problem is not None:
            kind, pack, detail = problem
            found.append((kind, "", pack, tree_id.hex(), "directory tree: " + detail))
            self._trees[tree_id] = found
            return found
        try:
            nodes = self.repo.read_tree(tree_id)
        except BackupError as exc:
            found.append(("bad_tree", "", None, tree_id.hex(), exc.detail))
            self._trees[tree_id] = found
            return found
        self.report.trees += 1
        for node in nodes:
            name = node.name.decode("utf-8", "backslashreplace")
            if node.type == "dir" and node.subtree is not None:
                for kind, path, pack, blob, detail in self._tree(node.subtree):
                    found.append((kind, f"{name}/{path}".rstrip("/"), pack, blob, detail))
            elif node.type == "file":
                self.report.files += 1
                for blob_id in node.content:
                    problem = self._blob_problem(blob_id)
                    if problem is not None:
                        kind, pack, detail = problem
                        found.append((kind, name, pack, blob_id.hex(), detail))
        self._trees[tree_id] = found
        return found
