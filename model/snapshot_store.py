"""The snapshot directory's lifecycle: pairs, pins, leases of serving workers, retention.

Layout under the snapshot root (shared by the retrainer and every worker)::

    candidates-<V>/  ranker-<V>/      one pair: both kinds with the same version
    .pins/<V>                         a pin: never deleted while the file exists (its text: why)
    .leases/<worker>.json             what one worker serves (and its canary), refreshed while
                                      it runs: {"versions": {...}, "canary": {...}|null, "ts"}
                                      (or in WATCHNEXT_SNAPSHOT_LEASE_DIR, a volume workers
                                      can write while the snapshots are mounted read-only)

A pair is the candidate snapshot and the ranker snapshot the trainer wrote together; both carry
one version (the candidates'). Older snapshots written before that rule have their own version
per kind and are listed by kind.

Retention keeps, per kind, the newest ``keep`` snapshots by manifest creation time, every
pinned version and every version a live lease names (a lease younger than ``lease_s``): nothing
a worker serves, a canary or a pin protects is ever deleted. A deleted snapshot is first renamed
to a hidden name and only then removed, so a reader never sees a half-deleted snapshot.

Pins and leases are one small file each, written by rename: concurrent writers never
read-modify-write a shared document.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.snapshot import _NAME, SnapshotError, is_snapshot_dir, snapshot_created

KINDS = ("candidates", "ranker")
PINS = ".pins"
LEASES = ".leases"


def pair_version(candidate_dir: Path) -> str:
    """The version a pair's ranker snapshot takes: its candidate snapshot's."""
    return candidate_dir.name.removeprefix("candidates-")


def _check_version(version: str) -> str:
    if not _NAME.fullmatch(version):
        raise ValueError(f"{version!r} is not a snapshot version (letters, digits, . _ -)")
    return version


@dataclass
class StoredSnapshot:
    """One snapshot directory as the lifecycle sees it."""

    kind: str
    version: str
    path: Path
    created: float
    bytes: int
    pinned: str | None = None  # the pin's reason when pinned
    served_by: list[str] = field(default_factory=list)  # workers whose live lease names it
    canary_of: list[str] = field(default_factory=list)  # workers serving it as their canary

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": self.version,
            "created": self.created,
            "bytes": self.bytes,
            "pinned": self.pinned,
            "served_by": self.served_by,
            "canary_of": self.canary_of,
        }


def _size(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.rename(path)


# --- pins -------------------------------------------------------------------------------------


def pin(root: Path, version: str, reason: str = "pinned") -> None:
    """Protect ``version`` (every kind of it) from retention until :func:`unpin`."""
    _atomic_write(Path(root) / PINS / _check_version(version), reason)


def unpin(root: Path, version: str) -> bool:
    """Remove the pin; True when there was one."""
    path = Path(root) / PINS / _check_version(version)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def pins(root: Path) -> dict[str, str]:
    """version -> reason of every pin."""
    d = Path(root) / PINS
    if not d.is_dir():
        return {}
    return {
        p.name: p.read_text(errors="replace")[:200]
        for p in d.iterdir()
        if _NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink()
    }


# --- leases -----------------------------------------------------------------------------------


def worker_name(app_id: str) -> str:
    """This process's lease name: the app, host and pid (unique among running workers)."""
    name = f"{app_id}-{socket.gethostname()}-{os.getpid()}"
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)
    return ("w" + safe if safe.startswith(".") else safe)[-128:]


def lease_dir(root: Path, where: Path | None = None) -> Path:
    """Where leases live: ``where`` (a volume workers may write while the snapshots are
    mounted read-only), else ``<root>/.leases``."""
    return Path(where) if where is not None else Path(root) / LEASES


def write_lease(
    root: Path,
    worker: str,
    versions: Mapping[str, str],
    canary: Mapping[str, str] | None = None,
    now: float | None = None,
    where: Path | None = None,
) -> None:
    """Record (or refresh) what ``worker`` serves."""
    doc = {
        "versions": dict(versions),
        "canary": dict(canary) if canary else None,
        "ts": time.time() if now is None else now,
    }
    _atomic_write(lease_dir(root, where) / f"{_check_version(worker)}.json", json.dumps(doc))


def drop_lease(root: Path, worker: str, where: Path | None = None) -> None:
    """A worker that stops cleanly releases what it served at once."""
    with contextlib.suppress(FileNotFoundError):
        (lease_dir(root, where) / f"{_check_version(worker)}.json").unlink()


@dataclass(frozen=True)
class Lease:
    worker: str
    versions: dict[str, str]
    canary: dict[str, str] | None
    ts: float


def leases(
    root: Path, lease_s: float, now: float | None = None, where: Path | None = None
) -> list[Lease]:
    """The live leases (refreshed within ``lease_s``); unreadable ones are skipped."""
    d = lease_dir(root, where)
    if not d.is_dir():
        return []
    now = time.time() if now is None else now
    out = []
    for p in sorted(d.glob("*.json")):
        try:
            doc = json.loads(p.read_text())
            versions = {str(k): str(v) for k, v in doc["versions"].items()}
            canary = doc.get("canary")
            canary = {str(k): str(v) for k, v in canary.items()} if canary else None
            ts = float(doc["ts"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if now - ts <= lease_s:
            out.append(Lease(p.name.removesuffix(".json"), versions, canary, ts))
    return out


# --- listing and retention --------------------------------------------------------------------


def stored(
    root: Path, lease_s: float = 600.0, now: float | None = None, where: Path | None = None
) -> list[StoredSnapshot]:
    """Every complete snapshot under ``root``, newest first, with its pins and leases
    (``where``: the lease directory, when not under ``root``)."""
    root = Path(root)
    pinned = pins(root)
    live = leases(root, lease_s, now, where)
    out = []
    for kind in KINDS:
        for d in root.glob(f"{kind}-*"):
            if not is_snapshot_dir(d):
                continue
            version = d.name.removeprefix(f"{kind}-")
            try:
                created = snapshot_created(d)
            except SnapshotError:
                continue
            out.append(
                StoredSnapshot(
                    kind,
                    version,
                    d,
                    created,
                    _size(d),
                    pinned.get(version),
                    [x.worker for x in live if x.versions.get(kind) == version],
                    [x.worker for x in live if (x.canary or {}).get(kind) == version],
                )
            )
    out.sort(key=lambda s: (s.created, s.version), reverse=True)
    return out


def pair_dirs(root: Path, version: str, ranker: str | None = None) -> tuple[Path, Path]:
    """The directories of pair ``version`` (``ranker`` names another ranker version), both
    complete; ValueError saying what is missing otherwise."""
    root = Path(root)
    cand = root / f"candidates-{_check_version(version)}"
    rank = root / f"ranker-{_check_version(ranker or version)}"
    missing = [d.name for d in (cand, rank) if not is_snapshot_dir(d)]
    if missing:
        raise ValueError(f"no complete snapshot {' or '.join(missing)} under {root}")
    return cand, rank


def retain(
    root: Path,
    keep: int,
    lease_s: float = 600.0,
    now: float | None = None,
    where: Path | None = None,
) -> list[StoredSnapshot]:
    """Delete the snapshots retention does not protect (see the module docstring); returns
    the deleted ones."""
    if keep < 1:
        raise ValueError("retention must keep at least the newest snapshot of each kind")
    everything = stored(root, lease_s, now, where)
    deleted = []
    for kind in KINDS:
        mine = [s for s in everything if s.kind == kind]  # newest first
        for s in mine[keep:]:
            if s.pinned is not None or s.served_by or s.canary_of:
                continue
            gone = s.path.with_name(f".deleting-{s.path.name}")
            s.path.rename(gone)
            shutil.rmtree(gone, ignore_errors=True)
            deleted.append(s)
    return deleted


def table(rows: Iterable[StoredSnapshot], now: float | None = None) -> str:
    """``watchnext snapshots list`` as text: one line per snapshot, newest first."""
    now = time.time() if now is None else now
    lines = [f"{'kind':10} {'version':32} {'age':>8} {'size':>9}  status"]
    for s in rows:
        status = []
        if s.served_by:
            status.append(f"served by {len(s.served_by)}")
        if s.canary_of:
            status.append(f"canary of {len(s.canary_of)}")
        if s.pinned is not None:
            status.append(f"pinned ({s.pinned})")
        lines.append(
            f"{s.kind:10} {s.version:32} {_age(now - s.created):>8} "
            f"{s.bytes / 1e6:>7.1f}MB  {', '.join(status) or '-'}"
        )
    return "\n".join(lines)


def _age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
