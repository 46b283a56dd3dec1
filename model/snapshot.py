"""Immutable, versioned model snapshots with a sha256 manifest.

A snapshot is a directory::

    <root>/<name>-<version>/
        weights.safetensors     tensors only (no pickle): loading never executes code
        meta.json               config, vocabularies, feature statistics, data window, metrics
        manifest.json           {"format": 1, "kind", "version", "created",
                                 "files": {name: {"sha256", "bytes"}}}
        <extra files>           optional opaque files (e.g. a prebuilt FAISS index), checksummed

It is written into a temporary sibling directory, fsync'ed, then renamed into place, so a reader
sees either nothing or a complete snapshot. :func:`load_snapshot` verifies every file against
the manifest and refuses a partial, corrupt or tampered snapshot with a clear error.

Every file is read through :mod:`model.snapshot_files`: opened once without following symlinks,
capped on the open descriptor, and parsed from the very bytes that were hashed. The checksum
only proves that a file matches its manifest, not that its content is benign; consumers of
opaque extras (the FAISS index) must still contain what they hand to native code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from model.snapshot_files import (
    FileEntry,
    MissingFile,
    SnapshotError,
    open_dir,
    read_file,
    read_safetensors,
    read_verified,
)

FORMAT = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
META = "meta.json"

# Size caps, checked with fstat before reading. A manifest lists a handful of files (< 1 KiB);
# 1 MiB still allows thousands of extras. meta.json of a 1M-item catalogue measures ~113 MiB
# (the ranker carries every item's catalogue facts, one indented JSON object each), and parsing
# it into Python objects costs several times that in memory, so 256 MiB leaves room for twice
# the design catalogue while bounding what a bad file can make a worker allocate. Weights of the
# 1M-item candidate model are ~0.8 GiB and its IVF index ~0.3 GiB: 8 GiB is ten times that.
MAX_MANIFEST_BYTES = 1 << 20
MAX_META_BYTES = 256 << 20
MAX_FILE_BYTES = 8 << 30

_MANIFEST_KEYS = {"format", "kind", "version", "files"}
_OPTIONAL_KEYS = {"created"}
_NAME = re.compile(r"(?!\.)[A-Za-z0-9._-]{1,128}")  # kinds, versions and file names: no paths
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Manifest:
    """A strictly validated ``manifest.json``.

    ``created`` is the writer's wall clock (absent from manifests written before it existed);
    it orders snapshots whatever their version names, which may be arbitrary.
    """

    kind: str
    version: str
    files: dict[str, FileEntry]
    created: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """A verified snapshot: its tensors, metadata and identity.

    ``created``: the manifest's creation time, else (older manifests) the directory's mtime.
    """

    path: Path
    kind: str
    version: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    extras: dict[str, bytes] = field(default_factory=dict)
    created: float = 0.0


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
    if set(extras) & {WEIGHTS, META, MANIFEST} or not all(_NAME.fullmatch(n) for n in extras):
        raise SnapshotError(f"invalid extra file names {sorted(extras)}")
    version = version or time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    if not _NAME.fullmatch(kind) or not _NAME.fullmatch(version):
        raise SnapshotError(f"invalid snapshot kind or version {kind!r} {version!r}")
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
    manifest = {
        "format": FORMAT,
        "kind": kind,
        "version": version,
        "created": time.time(),
        "files": files,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    for name in (*names, MANIFEST):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    tmp.rename(final)
    _fsync_dir(Path(root))
    return final


def _parse_manifest(raw: bytes, where: Path) -> Manifest:
    """Validate every field's type and form; anything unexpected is refused, not ignored."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise SnapshotError(f"{where}: unreadable manifest ({exc})") from None
    if not isinstance(doc, dict):
        raise SnapshotError(f"{where}: unreadable manifest (not a JSON object)")
    if doc.get("format") != FORMAT or isinstance(doc.get("format"), bool):
        raise SnapshotError(f"{where}: snapshot format {doc.get('format')!r}, expected {FORMAT}")
    missing = _MANIFEST_KEYS - set(doc)
    unknown = set(doc) - _MANIFEST_KEYS - _OPTIONAL_KEYS
    if missing or unknown:
        raise SnapshotError(
            f"{where}: unreadable manifest (missing {sorted(missing)}, unknown {sorted(unknown)})"
        )
    kind, version, files = doc["kind"], doc["version"], doc["files"]
    if not isinstance(kind, str) or not _NAME.fullmatch(kind):
        raise SnapshotError(f"{where}: invalid kind {kind!r}")
    if not isinstance(version, str) or not _NAME.fullmatch(version):
        raise SnapshotError(f"{where}: invalid version {version!r}")
    created = doc.get("created")
    if created is not None and (
        isinstance(created, bool)
        or not isinstance(created, int | float)
        or not math.isfinite(created)
    ):
        raise SnapshotError(f"{where}: invalid created time {created!r}")
    if not isinstance(files, dict) or not all(
        isinstance(n, str) and _NAME.fullmatch(n) and n != MANIFEST for n in files
    ):
        raise SnapshotError(f"{where}: invalid file list")
    entries: dict[str, FileEntry] = {}
    for name, entry in files.items():
        if (
            not isinstance(entry, dict)
            or set(entry) != {"sha256", "bytes"}
            or not isinstance(entry["sha256"], str)
            or not _SHA256.fullmatch(entry["sha256"])
            or isinstance(entry["bytes"], bool)
            or not isinstance(entry["bytes"], int)
            or entry["bytes"] < 0
        ):
            raise SnapshotError(f"{where}: invalid file list entry for {name!r}")
        entries[name] = FileEntry(entry["sha256"], entry["bytes"])
    for name in (WEIGHTS, META):
        if name not in entries:
            raise SnapshotError(f"{where.parent}: {name} missing (partial snapshot)")
    return Manifest(kind, version, entries, None if created is None else float(created))


def _manifest(dirfd: int, path: Path) -> Manifest:
    try:
        raw = read_file(dirfd, path, MANIFEST, MAX_MANIFEST_BYTES)
    except MissingFile:
        raise SnapshotError(f"{path}: no {MANIFEST} (partial or not a snapshot)") from None
    return _parse_manifest(raw, path / MANIFEST)


def read_manifest(path: Path) -> Manifest:
    """The validated manifest of the snapshot at ``path`` (cheap: reads only the manifest)."""
    path = Path(path)
    dirfd = open_dir(path)
    try:
        return _manifest(dirfd, path)
    finally:
        os.close(dirfd)


def snapshot_created(path: Path) -> float:
    """When the snapshot at ``path`` was written: its manifest's ``created``, else its mtime.

    The fallback serves manifests written before ``created`` existed; the directory's own
    mtime (never a symlink's target's) is what the poll has always ordered snapshots by.
    """
    path = Path(path)
    dirfd = open_dir(path)
    try:
        manifest = _manifest(dirfd, path)
        return manifest.created if manifest.created is not None else os.fstat(dirfd).st_mtime
    finally:
        os.close(dirfd)


def is_snapshot_dir(path: Path) -> bool:
    """True when ``path`` is a real directory (not a symlink) holding a regular manifest file.

    A cheap pre-filter for directory scans; :func:`load_snapshot` still verifies everything.
    """
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode) and stat.S_ISREG(
            os.lstat(Path(path) / MANIFEST).st_mode
        )
    except OSError:
        return False


def load_snapshot(
    path: Path,
    kind: str | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_meta_bytes: int = MAX_META_BYTES,
) -> Snapshot:
    """Verify and load a snapshot; raises :class:`SnapshotError` if anything is off.

    Every file is read once and parsed from the very bytes that were hashed, so a file swapped
    between verification and use cannot be loaded. The directory may hold the manifest and the
    files it lists, nothing else: a snapshot is written whole, so an unlisted entry (a planted
    symlink, a stray file) means it was changed after writing and is not what the manifest
    describes. ``max_file_bytes`` caps the weights and each extra, ``max_meta_bytes`` meta.json.
    """
    path = Path(path)
    dirfd = open_dir(path)
    try:
        manifest = _manifest(dirfd, path)
        if kind is not None and manifest.kind != kind:
            raise SnapshotError(f"{path}: a {manifest.kind!r} snapshot, expected {kind!r}")
        present = set(os.listdir(dirfd))
        if missing := sorted(set(manifest.files) - present):
            raise SnapshotError(f"{path}: {', '.join(missing)} missing (partial snapshot)")
        if unlisted := sorted(present - set(manifest.files) - {MANIFEST}):
            raise SnapshotError(f"{path}: unlisted entries {unlisted} (changed after writing)")
        files = manifest.files
        tensors = read_safetensors(dirfd, path, WEIGHTS, files[WEIGHTS], max_file_bytes)
        raw_meta = read_verified(dirfd, path, META, files[META], max_meta_bytes)
        try:
            meta = json.loads(raw_meta)
        except (ValueError, RecursionError) as exc:
            raise SnapshotError(f"{path / META}: unreadable ({exc})") from None
        del raw_meta
        if not isinstance(meta, dict):
            raise SnapshotError(f"{path / META}: not a JSON object")
        extras = {
            n: read_verified(dirfd, path, n, files[n], max_file_bytes)
            for n in sorted(set(files) - {WEIGHTS, META})
        }
        created = manifest.created
        if created is None:
            created = os.fstat(dirfd).st_mtime
    finally:
        os.close(dirfd)
    return Snapshot(
        path=path,
        kind=manifest.kind,
        version=manifest.version,
        tensors=tensors,
        meta=meta,
        extras=extras,
        created=created,
    )
