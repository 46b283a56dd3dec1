"""Reading snapshot files safely: each path opened once, and only the bytes that were hashed used.

The snapshot directory is shared storage another process may write to while a worker reads it,
so a path is looked at exactly once. The directory and each file are opened without following
symlinks, sized with ``fstat`` on the open descriptor (capped before a byte is read), read once
into memory, and the bytes that were hashed are the bytes that are parsed: nothing re-opens a
path after it was verified. A safetensors file is validated the way safetensors validates it and
its tensors are filled from the very bytes being hashed. A checksum only proves that a file
matches its manifest entry, not that its content is benign.

:mod:`model.snapshot` builds the snapshot format on top of these.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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


class MissingFile(SnapshotError):
    """A file the snapshot needs is not there (partial snapshot, or not a snapshot at all)."""


@dataclass(frozen=True)
class FileEntry:
    """One file as the manifest lists it: the checksum and size its bytes must have."""

    sha256: str
    bytes: int


def open_dir(path: Path) -> int:
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
        raise MissingFile(f"{path}: {name} missing (partial snapshot)") from None
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


def read_file(dirfd: int, path: Path, name: str, cap: int) -> bytes:
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


def read_safetensors(
    dirfd: int, path: Path, name: str, entry: FileEntry, cap: int
) -> dict[str, torch.Tensor]:
    """The tensors of safetensors file ``name``, read once, straight into their own memory.

    One pass over one descriptor: each tensor's bytes are read into the tensor and hashed
    there, so the hashed bytes are the loaded bytes and nothing is held twice (a 1M-item model
    is 0.8 GiB). The tensors are handed out only if the whole file matches the manifest. The
    header is parsed before the hash is known; the memory it makes us allocate is bounded by
    the file's size, which is capped. A header that does not parse is still hashed to the end,
    to tell a corrupt file (checksum mismatch) from a well-hashed malformed one.
    """
    where = path / name
    if entry.bytes > cap:
        raise SnapshotError(f"{where}: manifest says {entry.bytes} bytes, over the {cap} cap")
    fd, size = _open_regular(dirfd, path, name, cap)
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


def read_verified(dirfd: int, path: Path, name: str, entry: FileEntry, cap: int) -> bytes:
    """The bytes of ``name``, read once and checked against the manifest entry."""
    if entry.bytes > cap:
        raise SnapshotError(f"{path / name}: manifest says {entry.bytes} bytes, over the {cap} cap")
    data = read_file(dirfd, path, name, cap)
    if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise SnapshotError(f"{path / name}: checksum mismatch (corrupt or tampered)")
    return data
