"""Whether a shipped FAISS index may be deserialized: check its structure, probe it in a child.

A shipped index is opaque bytes handed to native code, and its checksum only proves that it is
the file its manifest lists, not that FAISS can read it safely. :func:`index_for_snapshot`
therefore parses the serialization's structure in Python first (:func:`check_index_bytes`),
then lets a short-lived child process deserialize and search those exact bytes
(:func:`probe_index_bytes`); only then does the worker deserialize them. Whatever fails, the
index is rebuilt from the snapshot's checksummed item embeddings, so a bad index costs a
rebuild, never a worker.

Shapes: N items, H embedding dim.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Literal

import faiss
import numpy as np

from serving.index import IndexConfig, ItemIndex

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 120.0  # a 1M-item IVF probe takes a few seconds; a hang is a failure

FLAT_FOURCC = b"IxFI"  # IndexFlatIP
IVF_FLAT_FOURCC = b"IwFl"  # IndexIVFFlat
_INVLISTS_FOURCC = b"ilar"  # ArrayInvertedLists
# fourcc, d, ntotal, two unused fields FAISS writes as 1 << 20, is_trained, metric_type
_HEADER = struct.Struct("<4siqqqBi")
_U64 = struct.Struct("<Q")


class IndexFormatError(ValueError):
    """Serialized index bytes that are not an index this project writes, for this model."""


@dataclass(frozen=True)
class IndexLayout:
    """What :func:`check_index_bytes` found: the index kind and its sizes."""

    kind: Literal["flat", "ivf"]
    dim: int
    ntotal: int
    nlist: int = 0


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise IndexFormatError(f"truncated at {what} (offset {self.pos}, {n} bytes wanted)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u64(self, what: str) -> int:
        return int(_U64.unpack(self.take(8, what))[0])


def _header(r: _Reader, fourcc: bytes, dim: int, ntotal: int, what: str) -> None:
    got, d, n, dummy1, dummy2, trained, metric = _HEADER.unpack(r.take(_HEADER.size, what))
    if got != fourcc:
        raise IndexFormatError(f"{what}: type {got!r}, expected {fourcc!r}")
    if (d, n) != (dim, ntotal):
        raise IndexFormatError(f"{what}: d={d} ntotal={n}, expected d={dim} ntotal={ntotal}")
    if dummy1 != 1 << 20 or dummy2 != 1 << 20 or trained != 1:
        raise IndexFormatError(f"{what}: malformed header")
    if metric != faiss.METRIC_INNER_PRODUCT:
        raise IndexFormatError(f"{what}: metric {metric}, expected inner product")


def _flat(r: _Reader, dim: int, ntotal: int, what: str) -> None:
    _header(r, FLAT_FOURCC, dim, ntotal, what)
    if r.u64(f"{what} codes") != dim * ntotal:
        raise IndexFormatError(f"{what}: code count is not d × ntotal")
    r.take(4 * dim * ntotal, f"{what} vectors")


def _list_sizes(r: _Reader, nlist: int) -> np.ndarray:
    kind = r.take(4, "list format")
    count = r.u64("list sizes")
    if kind == b"full" and count == nlist:
        return np.frombuffer(r.take(8 * nlist, "list sizes"), dtype="<u8").astype(np.int64)
    if kind == b"sprs" and count % 2 == 0 and count <= 2 * nlist:
        pairs = np.frombuffer(r.take(8 * count, "list sizes"), dtype="<u8").reshape(-1, 2)
        if (pairs[:, 0] >= nlist).any() or len(np.unique(pairs[:, 0])) != len(pairs):
            raise IndexFormatError("sparse list sizes name lists outside the index")
        sizes = np.zeros(nlist, dtype=np.int64)
        sizes[pairs[:, 0].astype(np.int64)] = pairs[:, 1].astype(np.int64)
        return sizes
    raise IndexFormatError(f"list sizes: format {kind!r} with {count} entries for {nlist} lists")


def check_index_bytes(data: bytes, dim: int, ntotal: int) -> IndexLayout:
    """Parse a serialized index in Python, before any native code sees it.

    Accepts exactly the two kinds :class:`ItemIndex` writes (an ``IndexFlatIP``, or an
    ``IndexIVFFlat`` over an ``IndexFlatIP`` quantizer with no direct map), with dimension
    ``dim`` and ``ntotal`` vectors, every length consistent with the total size, and inverted
    lists whose ids are each row 0..ntotal-1 exactly once (the rows :meth:`ItemIndex.search`
    maps to item ids). Raises :class:`IndexFormatError` saying what is off.
    """
    if dim <= 0 or ntotal < 0:
        raise IndexFormatError(f"expected d={dim} ntotal={ntotal}")
    r = _Reader(data)
    fourcc = data[:4]
    if fourcc == FLAT_FOURCC:
        _flat(r, dim, ntotal, "index")
        layout = IndexLayout("flat", dim, ntotal)
    elif fourcc == IVF_FLAT_FOURCC:
        _header(r, IVF_FLAT_FOURCC, dim, ntotal, "index")
        nlist = r.u64("nlist")
        r.u64("nprobe")
        if not 1 <= nlist <= max(ntotal, 1):
            raise IndexFormatError(f"nlist {nlist} for {ntotal} vectors")
        _flat(r, dim, nlist, "quantizer")
        if r.take(1, "direct map") != b"\0" or r.u64("direct map") != 0:
            raise IndexFormatError("unexpected direct map")
        if r.take(4, "inverted lists") != _INVLISTS_FOURCC:
            raise IndexFormatError("inverted lists of an unexpected type")
        if r.u64("nlist") != nlist or r.u64("code size") != 4 * dim:
            raise IndexFormatError("inverted lists disagree with the index")
        sizes = _list_sizes(r, nlist)
        if int(sizes.sum()) != ntotal or (sizes < 0).any():
            raise IndexFormatError(f"inverted lists hold {int(sizes.sum())} vectors, not {ntotal}")
        ids = []
        for size in sizes[sizes > 0].tolist():
            r.take(4 * dim * size, "codes")
            ids.append(np.frombuffer(r.take(8 * size, "ids"), dtype="<i8"))
        rows = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        if ((rows < 0) | (rows >= ntotal)).any() or (
            np.bincount(rows, minlength=ntotal) != 1
        ).any():
            raise IndexFormatError("inverted-list ids are not each row exactly once")
        layout = IndexLayout("ivf", dim, ntotal, nlist)
    else:
        raise IndexFormatError(f"index type {fourcc!r}, expected {FLAT_FOURCC!r} or IVF flat")
    if r.pos != len(data):
        raise IndexFormatError(f"{len(data) - r.pos} trailing bytes")
    return layout


# Runs in the child: deserialize, check sizes, search once visiting every list (so every
# list's codes and ids are read), check the rows returned. Exit 0 only if all of that held.
# argv: d, ntotal, and the path of a sealed memfd holding the bytes, or "-" for stdin.
_PROBE_CODE = """
import sys
import faiss
import numpy as np
dim, n, src = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if src == "-":
    index = faiss.deserialize_index(np.frombuffer(sys.stdin.buffer.read(), dtype=np.uint8))
else:
    index = faiss.read_index(src)
if index.d != dim or index.ntotal != n:
    sys.exit(f"deserialized d={index.d} ntotal={index.ntotal}, expected d={dim} ntotal={n}")
ivf = faiss.try_extract_index_ivf(index)
if ivf is not None:
    ivf.nprobe = ivf.nlist
_, rows = index.search(np.ones((1, dim), dtype=np.float32), min(10, n))
if not ((rows >= -1) & (rows < n)).all():
    sys.exit("search returned rows outside the index")
"""


@dataclass(frozen=True)
class ProbeResult:
    """Whether a child process deserialized and searched the bytes cleanly, and how long."""

    ok: bool
    detail: str
    seconds: float


def _sealed_memfd(data: bytes) -> int | None:
    """An anonymous in-memory file holding ``data``, sealed against any change; None if the
    platform has no memfd. Handing the child a file instead of a pipe halves the probe at 1M
    items (FAISS reads it directly: 0.5 s instead of 1.0 s), and the seals guarantee that the
    child reads exactly the bytes the parent verified."""
    if not hasattr(os, "memfd_create"):
        return None
    import fcntl

    fd = os.memfd_create("watchnext-index-probe", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        with memoryview(data) as view:
            done = 0
            while done < len(data):
                done += os.write(fd, view[done:])
        seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def probe_index_bytes(
    data: bytes, dim: int, ntotal: int, timeout_s: float = PROBE_TIMEOUT_S
) -> ProbeResult:
    """Deserialize and search ``data`` in a short-lived child process.

    A crash (signal), an exception (non-zero exit) or a hang (``timeout_s``) in native code
    ends the child, not the worker. The child gets the very bytes the caller will deserialize
    (a sealed memfd, else stdin), the parent's interpreter and environment (so the same FAISS
    build), minus the working directory on its import path, and one OpenMP thread (it must
    not compete with the serving threads for cores).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    fd = _sealed_memfd(data)
    src = "-" if fd is None else f"/proc/self/fd/{fd}"
    cmd = [sys.executable, "-P", "-c", _PROBE_CODE, str(dim), str(ntotal), src]
    try:
        done = subprocess.run(
            cmd,
            input=data if fd is None else None,
            stdin=subprocess.DEVNULL if fd is not None else None,
            capture_output=True,
            timeout=timeout_s,
            env=env,
            pass_fds=() if fd is None else (fd,),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(
            False, f"timed out after {timeout_s:.0f}s", time.perf_counter() - started
        )
    finally:
        if fd is not None:
            os.close(fd)
    seconds = time.perf_counter() - started
    if done.returncode == 0:
        return ProbeResult(True, "ok", seconds)
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = str(-done.returncode)
        return ProbeResult(False, f"killed by {name}", seconds)
    err = done.stderr.decode(errors="replace").strip().splitlines()
    return ProbeResult(False, f"exit {done.returncode}: {err[-1] if err else ''}"[:500], seconds)


class PendingIndex:
    """The serving index for a verified snapshot, decided now and finished by :meth:`get`.

    Started as soon as the candidate snapshot is loaded, so that the probe's child process
    runs while the caller loads the ranker (at 1M items the probe takes about a second).
    """

    def __init__(
        self,
        shipped: bytes | None,
        vectors: np.ndarray,
        item_ids: np.ndarray,
        config: IndexConfig | None = None,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self.config = config or IndexConfig()
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.item_ids = item_ids
        self.shipped = shipped
        self.refused: str | None = None  # why the shipped bytes are not used, if they are not
        self._probe: ProbeResult | None = None
        self._thread: threading.Thread | None = None
        n, dim = self.vectors.shape
        if shipped is None or n <= self.config.exact_max_items:
            self.shipped = None  # exact: cheaper to build from the vectors than to probe
            return
        try:
            layout = check_index_bytes(shipped, dim, n)
        except IndexFormatError as exc:
            self.refused = f"refused before loading ({exc})"
            return
        if layout.kind == "flat":  # the trainer chose exact: the same index, built unparsed
            self.config = replace(self.config, exact_max_items=n)
            self.shipped = None
            return

        def probe() -> None:
            self._probe = probe_index_bytes(shipped, dim, n, probe_timeout_s)

        self._thread = threading.Thread(target=probe, name="index-probe", daemon=True)
        self._thread.start()

    def get(self) -> ItemIndex:
        """Wait for the probe, then deserialize the shipped bytes or build from the vectors."""
        if self._thread is not None:
            self._thread.join()
            probe = self._probe
            if probe is not None and probe.ok:
                log.info("shipped index probed in %.2fs", probe.seconds)
                assert self.shipped is not None
                return ItemIndex.from_bytes(self.shipped, self.item_ids, self.config)
            self.refused = f"failed its probe ({probe.detail if probe else 'probe died'})"
        index = ItemIndex(self.vectors, self.item_ids, self.config)
        if self.refused is not None:
            log.error("shipped index %s; rebuilt from the embeddings", self.refused)
            index.origin = "rebuilt"
        return index


def index_for_snapshot(
    shipped: bytes | None,
    vectors: np.ndarray,
    item_ids: np.ndarray,
    config: IndexConfig | None = None,
    probe_timeout_s: float = PROBE_TIMEOUT_S,
) -> ItemIndex:
    """The serving index over verified item ``vectors`` [N, H], from ``shipped`` bytes if safe.

    An exact (flat) index is never deserialized: it is a copy of the vectors, so building it
    costs one memcpy, less than probing it. An IVF index (a minute to build at 1M items) is
    used only after :func:`check_index_bytes` and :func:`probe_index_bytes` both pass; if
    either fails, the reason is logged and the index is rebuilt from ``vectors``
    (``origin == "rebuilt"``), which the snapshot's checksum and the model table vouch for.
    """
    return PendingIndex(shipped, vectors, item_ids, config, probe_timeout_s).get()
