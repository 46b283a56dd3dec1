"""The pre-join rebuild's view of faust's table directory (no broker)."""

from __future__ import annotations

from pathlib import Path

from stream.rebuild import local_partitions


def test_local_partitions_are_read_from_fausts_directory_names(tmp_path: Path) -> None:
    for name in ("users-0.db", "users-3.db", "items-3.db", "my-table-12.db"):
        (tmp_path / name).mkdir()
    (tmp_path / "users-7.db.tmp").mkdir()  # not a partition database
    (tmp_path / "users-5.db").write_text("")  # a file, not a RocksDB directory
    assert local_partitions(tmp_path) == {"items": [3], "my-table": [12], "users": [0, 3]}
    assert local_partitions(tmp_path / "missing") == {}
