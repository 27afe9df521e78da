"""Snapshot trees: one JSON document per directory, stored as a TREE blob.

A tree is ``{"nodes": [node, …]}`` sorted by name. Names and symlink targets are bytes on
POSIX; valid UTF-8 is stored as a string (``name``/``target``), anything else base64-encoded
(``name_b64``/``target_b64``). Decoding validates every name, so a crafted tree cannot name
``..``, ``/`` or duplicates.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from fleetkeep.backup.errors import IntegrityError, UnsafePath

NodeType = Literal["file", "dir", "symlink"]
_TYPES = ("file", "dir", "symlink")


@dataclass(slots=True)
class Node:
    name: bytes
    type: NodeType
    mode: int
    mtime_ns: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    content: list[bytes] = field(default_factory=list)
    subtree: bytes | None = None
    target: bytes | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


def check_node_name(name: bytes) -> bytes:
    """A name must be one path component: never empty, ``.``, ``..``, or holding ``/`` or NUL."""
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        raise UnsafePath(f"unsafe name in snapshot tree: {name!r}")
    return name


def _put_bytes(doc: dict[str, Any], key: str, value: bytes) -> None:
    try:
        doc[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        doc[key + "_b64"] = base64.b64encode(value).decode("ascii")


def _get_bytes(doc: dict[str, Any], key: str) -> bytes | None:
    if key in doc:
        return str(doc[key]).encode("utf-8")
    if key + "_b64" in doc:
        return base64.b64decode(doc[key + "_b64"], validate=True)
    return None


def encode_tree(nodes: list[Node]) -> bytes:
    out = []
    for n in sorted(nodes, key=lambda n: n.name):
        doc: dict[str, Any] = {}
        _put_bytes(doc, "name", n.name)
        doc.update(type=n.type, mode=n.mode, mtime_ns=n.mtime_ns, uid=n.uid, gid=n.gid)
        if n.type == "file":
            doc["size"] = n.size
            doc["content"] = [c.hex() for c in n.content]
        elif n.type == "dir":
            assert n.subtree is not None
            doc["subtree"] = n.subtree.hex()
        else:
            assert n.target is not None
            _put_bytes(doc, "target", n.target)
        if n.xattrs:
            doc["xattrs"] = {
                base64.b64encode(k).decode(): base64.b64encode(v).decode()
                for k, v in sorted(n.xattrs.items())
            }
        out.append(doc)
    return json.dumps({"nodes": out}, separators=(",", ":"), ensure_ascii=False).encode()


def decode_tree(raw: bytes, what: str) -> list[Node]:
    try:
        doc = json.loads(raw)
        nodes = []
        seen: set[bytes] = set()
        for d in doc["nodes"]:
            name = _get_bytes(d, "name")
            if name is None:
                raise IntegrityError(f"{what}: node without a name")
            check_node_name(name)
            if name in seen:
                raise UnsafePath(f"{what}: duplicate name {name!r}")
            seen.add(name)
            kind = d["type"]
            if kind not in _TYPES:
                raise IntegrityError(f"{what}: unknown node type {kind!r}")
            node = Node(
                name=name,
                type=kind,
                mode=int(d["mode"]) & 0o7777,
                mtime_ns=int(d["mtime_ns"]),
                uid=int(d.get("uid", 0)),
                gid=int(d.get("gid", 0)),
            )
            if kind == "file":
                node.size = int(d["size"])
                node.content = [bytes.fromhex(c) for c in d["content"]]
            elif kind == "dir":
                node.subtree = bytes.fromhex(d["subtree"])
            else:
                node.target = _get_bytes(d, "target")
                if node.target is None:
                    raise IntegrityError(f"{what}: symlink {name!r} without a target")
            node.xattrs = {
                base64.b64decode(k): base64.b64decode(v) for k, v in d.get("xattrs", {}).items()
            }
            nodes.append(node)
        return nodes
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{what}: malformed tree ({exc})") from exc
