"""Immutable, versioned model snapshots with a sha256 manifest.

A snapshot is a directory::

    <root>/<name>-<version>/
        weights.safetensors     tensors only (no pickle): loading never executes code
        meta.json               config, vocabularies, feature statistics, data window, metrics
        manifest.json           {"format": 1, "kind", "version", "files": {name: {sha256, bytes}}}
        <extra files>           optional opaque files (e.g. a prebuilt FAISS index), checksummed

It is written into a temporary sibling directory, fsync'ed, then renamed into place, so a reader
sees either nothing or a complete snapshot. :func:`load_snapshot` verifies every file against
the manifest and refuses a partial, corrupt or tampered snapshot with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
META = "meta.json"


class SnapshotError(RuntimeError):
    """The snapshot cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class Snapshot:
    """A verified snapshot: its tensors, metadata and identity."""

    path: Path
    kind: str
    version: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    extras: dict[str, bytes] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(
    root: Path,
    kind: str,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    version: str | None = None,
    extras: dict[str, bytes] | None = None,
) -> Path:
    """Write a new snapshot under ``root`` atomically; returns its directory.

    ``extras`` are further files (name -> bytes) listed and checksummed in the manifest like
    the weights; a prebuilt ANN index travels this way so workers need not rebuild it.
    """
    extras = extras or {}
    if set(extras) & {WEIGHTS, META, MANIFEST} or any(
        "/" in n or n.startswith(".") for n in extras
    ):
        raise SnapshotError(f"invalid extra file names {sorted(extras)}")
    version = version or time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    final = Path(root) / f"{kind}-{version}"
    if final.exists():
        raise SnapshotError(f"{final} exists: snapshots are immutable")
    tmp = Path(root) / f".tmp-{kind}-{version}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # clone: safetensors refuses views that share storage (e.g. item_embeddings = weight[1:])
    save_file({k: v.detach().cpu().clone() for k, v in tensors.items()}, str(tmp / WEIGHTS))
    (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    for name, data in extras.items():
        (tmp / name).write_bytes(data)
    names = (WEIGHTS, META, *sorted(extras))
    files = {
        name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        for name in names
    }
    manifest = {"format": FORMAT, "kind": kind, "version": version, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    for name in (*names, MANIFEST):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    tmp.rename(final)
    _fsync_dir(Path(root))
    return final


def load_snapshot(path: Path, kind: str | None = None) -> Snapshot:
    """Verify and load a snapshot; raises :class:`SnapshotError` if anything is off."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise SnapshotError(f"{path}: no {MANIFEST} (partial or not a snapshot)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as exc:
        raise SnapshotError(f"{manifest_path}: unreadable manifest ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise SnapshotError(
            f"{path}: snapshot format {manifest.get('format')!r}, expected {FORMAT}"
        )
    if kind is not None and manifest.get("kind") != kind:
        raise SnapshotError(f"{path}: a {manifest.get('kind')!r} snapshot, expected {kind!r}")
    if not isinstance(files, dict) or any(
        not isinstance(n, str) or "/" in n or n.startswith(".") or n == MANIFEST for n in files
    ):
        raise SnapshotError(f"{manifest_path}: invalid file list")
    for name in sorted({WEIGHTS, META} | set(files)):
        entry = files.get(name)
        file = path / name
        if entry is None or not file.is_file():
            raise SnapshotError(f"{path}: {name} missing (partial snapshot)")
        if file.stat().st_size != entry["bytes"] or _sha256(file) != entry["sha256"]:
            raise SnapshotError(f"{file}: checksum mismatch (corrupt or tampered)")
    return Snapshot(
        path=path,
        kind=manifest["kind"],
        version=manifest["version"],
        tensors=load_file(str(path / WEIGHTS)),
        meta=json.loads((path / META).read_text()),
        extras={n: (path / n).read_bytes() for n in sorted(set(files) - {WEIGHTS, META})},
    )
