"""core/files.py: the digests the cohort records and the Slicer worklist checks, atomic text writes."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from SegUncertaintyLib.core.files import has_dicom_preamble, series_sha256, sha256_file, write_text_atomic


def make_series(folder):
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(["b.dcm", "a.dcm", "sub/c.dcm"]):
        (folder / name).write_bytes(b"\0" * 128 + b"DICM" + bytes([i]) * 10)
    return [str(folder / n) for n in ("sub/c.dcm", "a.dcm", "b.dcm")]


def test_series_digest_is_sha256_of_relative_paths_and_file_digests_in_order(tmp_path):
    files = make_series(tmp_path / "s")
    lines = "".join(f"{rel}\0{sha256_file(tmp_path / 's' / rel)}\n" for rel in ("a.dcm", "b.dcm", "sub/c.dcm"))
    assert series_sha256(tmp_path / "s", files) == hashlib.sha256(lines.encode()).hexdigest()
    assert series_sha256(tmp_path / "s", list(reversed(files))) == series_sha256(tmp_path / "s", files)


def test_series_digest_survives_a_move_and_sees_a_changed_slice(tmp_path):
    files = make_series(tmp_path / "s")
    before = series_sha256(tmp_path / "s", files)
    shutil.move(tmp_path / "s", tmp_path / "moved")
    moved = [f.replace(str(tmp_path / "s"), str(tmp_path / "moved")) for f in files]
    assert series_sha256(tmp_path / "moved", moved) == before
    (tmp_path / "moved" / "a.dcm").write_bytes(b"changed")
    assert series_sha256(tmp_path / "moved", moved) != before


def test_sha256_file_and_dicom_preamble(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"abc" * 1000)
    assert sha256_file(path, chunk=7) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert not has_dicom_preamble(path) and not has_dicom_preamble(tmp_path / "missing")
    files = make_series(tmp_path / "s")
    assert all(has_dicom_preamble(f) for f in files)


def test_atomic_write_replaces_whole_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "w.txt"
    write_text_atomic(target, "one\n")
    write_text_atomic(target, "two\n")
    assert target.read_text() == "two\n" and sorted(p.name for p in tmp_path.iterdir()) == ["w.txt"]

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("SegUncertaintyLib.core.files.os.replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_text_atomic(target, "three\n")
    assert target.read_text() == "two\n" and sorted(p.name for p in tmp_path.iterdir()) == ["w.txt"]
