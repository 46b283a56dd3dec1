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

What is trusted, and how far: the snapshot directory is shared storage another process may
write to while a worker reads it, so a path is looked at exactly once. The directory and each
file are opened without following symlinks, sized with ``fstat`` on the open descriptor (capped
before a byte is read), read once into memory, and the bytes that were hashed are the bytes
that are parsed: nothing re-opens a path after it was verified. The checksum only proves that a
file matches its manifest, not that its content is benign; consumers of opaque extras (the
FAISS index) must still contain what they hand to native code.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

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
_READ_CHUNK = 0x7FFFF000  # the most one read(2) returns on Linux
_HASH_STEP = 8 << 20  # read and hash weights in steps that stay in cache between the two
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on its JSON header
_DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}


class SnapshotError(RuntimeError):
    """The snapshot cannot be used; the message says which file and why."""


class _Missing(SnapshotError):
    """A file the snapshot needs is not there (partial snapshot, or not a snapshot at all)."""


@dataclass(frozen=True)
class FileEntry:
    """One file as the manifest lists it."""

    sha256: str
    bytes: int


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


# --- reading: each path opened once, without following symlinks ---------------------------------


def _open_dir(path: Path) -> int:
    """A descriptor on the snapshot directory itself; a symlink in its place is refused."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no such snapshot directory") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise SnapshotError(
                f"{path}: is a symlink (snapshots must be real directories)"
            ) from None
        raise SnapshotError(f"{path}: cannot open snapshot directory ({exc.strerror})") from None


def _open_regular(dirfd: int, path: Path, name: str, cap: int) -> tuple[int, int]:
    """An open descriptor on regular file ``name`` in the directory, and its size (<= ``cap``).

    O_NOFOLLOW: a symlink is refused, not followed. O_NONBLOCK: a FIFO planted under a listed
    name cannot hang the loader on open (it is then refused as not a regular file).
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(name, flags, dir_fd=dirfd)
    except FileNotFoundError:
        raise _Missing(f"{path}: {name} missing (partial snapshot)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SnapshotError(f"{path / name}: is a symlink (refused)") from None
        raise SnapshotError(f"{path / name}: cannot open ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > cap:
        os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SnapshotError(f"{path / name}: not a regular file (refused)")
        raise SnapshotError(
            f"{path / name}: {st.st_size} bytes, over the {cap}-byte cap for this file"
        )
    return fd, st.st_size


def _read_file(dirfd: int, path: Path, name: str, cap: int) -> bytes:
    """The whole content of regular file ``name`` in the directory, read once."""
    fd, size = _open_regular(dirfd, path, name, cap)
    try:
        return _read_exact(fd, size, path / name)
    finally:
        os.close(fd)


def _read_exact(fd: int, n: int, where: Path) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, _READ_CHUNK))
        if not chunk:
            raise SnapshotError(f"{where}: shrank while being read (replaced?)")
        chunks.append(chunk)
        n -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _layout(raw: bytes, size: int, where: Path) -> list[tuple[str, torch.dtype, list[int], int]]:
    """(name, dtype, shape, bytes) per tensor in file order, from a safetensors JSON header.

    Checked as safetensors checks it: known dtypes, sizes that match the shapes, and tensors
    that tile the ``size``-byte data section exactly, in order, without gaps or overlaps.
    """

    def bad(why: str) -> SnapshotError:
        return SnapshotError(f"{where}: not a valid safetensors file ({why})")

    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise bad(f"unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise bad("__metadata__ is not a string map")
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"entry {name!r}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPES:
            raise bad(f"{name!r}: dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise bad(f"{name!r}: shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= size
        ):
            raise bad(f"{name!r}: offsets {offsets!r}")
        nbytes = offsets[1] - offsets[0]
        if math.prod(shape) * _DTYPES[dtype].itemsize != nbytes:
            raise bad(f"{name!r}: {nbytes} bytes for shape {shape}")
        spans.append((offsets[0], offsets[1], name, _DTYPES[dtype], shape))
    spans.sort(key=lambda span: (span[0], span[1]))
    end = 0
    for begin, stop, name, _, _ in spans:
        if begin != end:
            raise bad(f"{name!r} does not start where the previous tensor ends")
        end = stop
    if end != size:
        raise bad(f"tensors cover {end} of {size} data bytes")
    return [(name, dtype, shape, stop - begin) for begin, stop, name, dtype, shape in spans]


def _hash_into(fd: int, dest: memoryview, h: Any, where: Path) -> None:
    """Fill ``dest`` from ``fd`` and feed exactly those bytes to ``h``, in cache-sized steps."""
    done, size = 0, len(dest)
    while done < size:
        step = dest[done : done + _HASH_STEP]
        n = os.readv(fd, [step])
        if n == 0:
            raise SnapshotError(f"{where}: shrank while being read (replaced?)")
        h.update(step[:n])
        done += n


def _load_weights(dirfd: int, path: Path, entry: FileEntry, cap: int) -> dict[str, torch.Tensor]:
    """The tensors of the weights file, read once, straight into their own memory.

    One pass over one descriptor: each tensor's bytes are read into the tensor and hashed
    there, so the hashed bytes are the loaded bytes and nothing is held twice (a 1M-item model
    is 0.8 GiB). The tensors are handed out only if the whole file matches the manifest. The
    header is parsed before the hash is known; the memory it makes us allocate is bounded by
    the file's size, which is capped. A header that does not parse is still hashed to the end,
    to tell a corrupt file (checksum mismatch) from a well-hashed malformed one.
    """
    where = path / WEIGHTS
    if entry.bytes > cap:
        raise SnapshotError(f"{where}: manifest says {entry.bytes} bytes, over the {cap} cap")
    fd, size = _open_regular(dirfd, path, WEIGHTS, cap)
    h = hashlib.sha256()
    tensors: dict[str, torch.Tensor] = {}
    malformed: SnapshotError | None = None
    try:
        if size != entry.bytes:
            raise SnapshotError(f"{where}: checksum mismatch (corrupt or tampered)")
        head = _read_exact(fd, min(8, size), where)
        h.update(head)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 <= n <= min(_MAX_HEADER_BYTES, size - 8):
            malformed = SnapshotError(f"{where}: not a valid safetensors file (header length)")
        else:
            raw = _read_exact(fd, n, where)
            h.update(raw)
            try:
                layout = _layout(raw, size - 8 - n, where)
            except SnapshotError as exc:
                malformed = exc
        if malformed is None and sys.byteorder != "little":
            malformed = SnapshotError(f"{where}: loading needs a little-endian machine")
        if malformed is None:
            for name, dtype, shape, nbytes in layout:
                out = torch.empty(shape, dtype=dtype)
                if nbytes:
                    _hash_into(fd, out.view(-1).view(torch.uint8).numpy().data, h, where)
                tensors[name] = out
        else:
            scratch = memoryview(bytearray(_HASH_STEP))
            while chunk := os.readv(fd, [scratch]):
                h.update(scratch[:chunk])
    finally:
        os.close(fd)
    if h.hexdigest() != entry.sha256:
        raise SnapshotError(f"{where}: checksum mismatch (corrupt or tampered)")
    if malformed is not None:
        raise malformed
    return tensors


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
        raw = _read_file(dirfd, path, MANIFEST, MAX_MANIFEST_BYTES)
    except _Missing:
        raise SnapshotError(f"{path}: no {MANIFEST} (partial or not a snapshot)") from None
    return _parse_manifest(raw, path / MANIFEST)


def read_manifest(path: Path) -> Manifest:
    """The validated manifest of the snapshot at ``path`` (cheap: reads only the manifest)."""
    path = Path(path)
    dirfd = _open_dir(path)
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
    dirfd = _open_dir(path)
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


def _verified(dirfd: int, path: Path, name: str, entry: FileEntry, cap: int) -> bytes:
    """The bytes of ``name``, read once and checked against the manifest entry."""
    if entry.bytes > cap:
        raise SnapshotError(f"{path / name}: manifest says {entry.bytes} bytes, over the {cap} cap")
    data = _read_file(dirfd, path, name, cap)
    if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise SnapshotError(f"{path / name}: checksum mismatch (corrupt or tampered)")
    return data


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
    dirfd = _open_dir(path)
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
        tensors = _load_weights(dirfd, path, files[WEIGHTS], max_file_bytes)
        raw_meta = _verified(dirfd, path, META, files[META], max_meta_bytes)
        try:
            meta = json.loads(raw_meta)
        except (ValueError, RecursionError) as exc:
            raise SnapshotError(f"{path / META}: unreadable ({exc})") from None
        del raw_meta
        if not isinstance(meta, dict):
            raise SnapshotError(f"{path / META}: not a JSON object")
        extras = {
            n: _verified(dirfd, path, n, files[n], max_file_bytes)
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
