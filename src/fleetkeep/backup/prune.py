"""``forget`` drops snapshots a retention policy no longer keeps; ``prune`` reclaims space.

Prune never blocks backups. It only deletes packs no index names, and does so in two phases:

1. *Mark*: compute the blobs every snapshot references; copy the live blobs of sparse packs
   into new packs (sealed blobs are copied as they are — their seal is bound to the blob id,
   not to a pack); write a ``pending/`` record listing the packs to delete and the snapshots
   seen; write one consolidated index without those packs; delete the index files it read.
2. *Sweep* (same run when ``grace`` is zero, else a later prune once the record is older than
   ``grace``): any snapshot not listed in the record was written by a backup that may have
   deduplicated against a marked pack; packs holding blobs such snapshots need and the index
   lacks are re-indexed instead of deleted. The rest are deleted.

A backup running across both phases longer than ``grace`` is the only unsafe case, so
``grace`` should exceed the longest backup (default 6 hours).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fleetkeep.backup.crypto import ObjectKind
from fleetkeep.backup.errors import IntegrityError, ObjectNotFound
from fleetkeep.backup.pack import PackEntry, pack_name
from fleetkeep.backup.repository import BlobSink, Repository, Snapshot
from fleetkeep.backup.retention import RetentionPolicy, snapshots_to_keep

DEFAULT_GRACE = timedelta(hours=6)
DEFAULT_REPACK_THRESHOLD = 0.2


@dataclass
class PruneReport:
    packs_before: int = 0
    bytes_before: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_resurrected: int = 0
    packs_written: int = 0
    bytes_after: int = 0
    pending: list[str] = field(default_factory=list)


def forget(
    repo: Repository, policy: RetentionPolicy, *, now: datetime | None = None, dry_run: bool = False
) -> list[Snapshot]:
    """Delete the snapshots the policy does not keep; return them."""
    snaps = repo.list_snapshots()
    keep = snapshots_to_keep(snaps, policy, now or datetime.now(UTC))
    gone = [s for s in snaps if s.id not in keep]
    if not dry_run:
        for s in gone:
            repo.store.delete(f"snapshots/{s.id}")
    return gone


def referenced_blobs(repo: Repository, snapshots: Iterable[Snapshot]) -> set[bytes]:
    """Every tree and data blob the snapshots reference. A tree that cannot be read aborts:
    deleting data on a partial view could destroy what that tree needs."""
    used: set[bytes] = set()
    stack = [s.tree for s in snapshots]
    while stack:
        tree_id = stack.pop()
        if tree_id in used:
            continue
        used.add(tree_id)
        for node in repo.read_tree(tree_id):
            if node.subtree is not None:
                stack.append(node.subtree)
            used.update(node.content)
    return used


def unindexed_packs(repo: Repository) -> list[str]:
    """Packs in the store that no index names and no pending deletion claims."""
    claimed = set(repo.index.packs())
    for _, record in _pending_records(repo):
        claimed.update(record["packs"])
    return [
        o.name.rpartition("/")[2]
        for o in repo.store.list("packs/")
        if o.name.rpartition("/")[2] not in claimed
    ]


def adopt_unindexed_packs(repo: Repository) -> int:
    """Index packs an interrupted backup uploaded, so their blobs are reused, not re-sent."""
    adopted: list[tuple[str, list[PackEntry]]] = []
    for pack_id in unindexed_packs(repo):
        try:
            entries = repo.read_pack_header(pack_id)
        except IntegrityError:
            continue  # a damaged orphan is left for check to report and prune to delete
        repo.index.add_pack(pack_id, entries)
        adopted.append((pack_id, entries))
    if adopted:
        repo.write_index_file(adopted)
    return len(adopted)


def _show_marked_packs(repo: Repository) -> set[str]:
    """Add marked, unindexed packs to the in-memory index only; return their ids."""
    shown: set[str] = set()
    for _, record in _pending_records(repo):
        for pack_id in record["packs"]:
            if pack_id in repo.index.pack_entries:
                continue
            try:
                repo.index.add_pack(pack_id, repo.read_pack_header(pack_id))
            except (IntegrityError, ObjectNotFound):
                continue
            shown.add(pack_id)
    return shown


def _pending_records(repo: Repository) -> list[tuple[str, dict[str, list[str] | str]]]:
    out = []
    for obj in repo.store.list("pending/"):
        record = json.loads(repo.load_object(ObjectKind.PENDING, obj.name))
        out.append((obj.name, record))
    return out


def prune(
    repo: Repository,
    *,
    repack_threshold: float = DEFAULT_REPACK_THRESHOLD,
    grace: timedelta = DEFAULT_GRACE,
    now: datetime | None = None,
) -> PruneReport:
    now = now or datetime.now(UTC)
    report = PruneReport()
    repo.load_index()
    old_index_files = list(repo.index_files)
    # Packs an earlier prune marked may hold blobs a newer snapshot deduplicated against:
    # seen like indexed packs, such a pack is live again and goes back into the index.
    revived = _show_marked_packs(repo)
    snaps = repo.list_snapshots()
    used = referenced_blobs(repo, snaps)
    stored = {o.name.rpartition("/")[2]: o for o in repo.store.list("packs/")}
    report.packs_before = len(stored)
    report.bytes_before = sum(o.size for o in stored.values())

    kept: list[tuple[str, list[PackEntry]]] = []
    doomed: list[str] = []
    sink = BlobSink(repo)
    placed: set[bytes] = set()
    # The sink adds the packs it writes to the in-memory index: iterate over a copy.
    indexed = dict(repo.index.pack_entries)
    for pack_id, entries in indexed.items():
        if pack_id not in stored:
            continue  # check reports it; nothing to reclaim
        live = [e for e in entries if e.blob_id in used and e.blob_id not in placed]
        placed.update(e.blob_id for e in live)
        total = stored[pack_id].size
        live_bytes = sum(e.length for e in live)
        if not live:
            doomed.append(pack_id)
        elif 1 - live_bytes / total > repack_threshold:
            data = repo.store.get(pack_name(pack_id))
            for e in live:
                sealed = data[e.offset : e.offset + e.length]
                repo.crypto.open_blob(e.blob_type, e.blob_id, sealed)  # never copy damage
                sink.put_sealed(e.blob_type, e.blob_id, sealed)
            doomed.append(pack_id)
            report.packs_repacked += 1
        else:
            kept.append((pack_id, entries))
            report.packs_resurrected += pack_id in revived
    in_pending = {p for _, r in _pending_records(repo) for p in r["packs"]}
    for pack_id, obj in stored.items():
        if pack_id not in indexed and pack_id not in in_pending and now - obj.modified >= grace:
            doomed.append(pack_id)  # left by a backup that crashed before indexing it

    new_index_files = sink.flush()
    report.packs_written = len(sink.written_packs)
    if doomed:
        record = {"time": now.isoformat(), "packs": doomed, "snapshots": [s.id for s in snaps]}
        report.pending.append(
            repo.save_object(ObjectKind.PENDING, "pending", json.dumps(record).encode())
        )
    if doomed or new_index_files or len(old_index_files) > 1:
        repo.write_index_file(kept)
        for name in old_index_files:
            repo.store.delete(name)
    _sweep(repo, now, grace, report)
    report.bytes_after = sum(o.size for o in repo.store.list("packs/"))
    return report


def _sweep(repo: Repository, now: datetime, grace: timedelta, report: PruneReport) -> None:
    """Delete marked packs past ``grace`` unless a snapshot the mark did not see needs them."""
    for name, record in _pending_records(repo):
        if now - datetime.fromisoformat(str(record["time"])) < grace:
            continue
        repo.load_index()
        marked = [p for p in record["packs"] if p not in repo.index.pack_entries]
        seen = set(record["snapshots"])
        newer = [s for s in repo.list_snapshots() if s.id not in seen]
        revive: list[tuple[str, list[PackEntry]]] = []
        if newer:
            shown = _show_marked_packs(repo)
            needed = referenced_blobs(repo, newer)
            holders = {loc.pack_id for b in needed if (loc := repo.index.get(b)) is not None}
            revive = [(p, repo.index.pack_entries[p]) for p in shown if p in holders]
        revived = {p for p, _ in revive}
        for pack_id in marked:
            if pack_id not in revived:
                repo.store.delete(pack_name(pack_id))
                report.packs_deleted += 1
        if revive:
            repo.write_index_file(revive)
            report.packs_resurrected += len(revive)
        repo.store.delete(name)
    repo.load_index()
