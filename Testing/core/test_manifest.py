"""core.manifest: the one writer and reader of a run's manifest.json."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from SegUncertaintyLib.core.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    ManifestError,
    build_manifest,
    parse_manifest,
    read_manifest,
    written_files,
)
from SegUncertaintyLib.results.run_folder import run_files


def description() -> SimpleNamespace:
    member = SimpleNamespace(path=Path("/models/m/net.pt"), sha256="ab" * 32)
    return SimpleNamespace(name="m", version="1.0", folder=Path("/models/m"), members=[member],
                           labels={0: "background", 1: "organ"})


def manifest(**change) -> dict:
    built = build_manifest(version="0.0", input_name="in.nrrd", description=description(), method="ensemble",
                           n_samples=2, device="cpu", settings={"seed": 0}, notes=[],
                           outputs=[{"file": "segmentation.nrrd", "kind": "labelmap", "meaning": "m"}])
    return built | change


def test_a_built_manifest_reads_back_unchanged(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps(manifest()))
    read = read_manifest(tmp_path)
    assert read == json.loads(json.dumps(manifest())) and read["format_version"] == FORMAT_VERSION == 1
    assert read["model"]["members"] == [{"file": "net.pt", "sha256": "ab" * 32}]
    assert read["labels"] == {"0": "background", "1": "organ"}
    assert run_files(tmp_path) == {"segmentation.nrrd", MANIFEST}


def test_version_1_without_its_field_is_read_and_an_unknown_version_refused(tmp_path):
    old = manifest()
    del old["format_version"]
    assert parse_manifest(old) is old
    for version in (2, "1", True, None):
        with pytest.raises(ManifestError, match="format_version"):
            parse_manifest(manifest(format_version=version))
        (tmp_path / MANIFEST).write_text(json.dumps(manifest(format_version=version)))
        assert run_files(tmp_path) is None  # a folder this version cannot read is not taken as its own


@pytest.mark.parametrize("data, problem", [
    ([1, 2], "not a JSON object"),
    ({"outputs": {"a": 1}}, "'outputs'"),
    ({"outputs": [{"file": "x"}]}, "'kind'"),
])
def test_malformed_manifests_name_the_problem(data, problem):
    with pytest.raises(ManifestError, match=problem):
        parse_manifest(data)


def test_read_manifest_tells_missing_and_not_json_apart(tmp_path):
    with pytest.raises(ManifestError, match="cannot be read") as missing:
        read_manifest(tmp_path)
    assert isinstance(missing.value.__cause__, FileNotFoundError)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_written_files_needs_this_tool_and_plain_file_names():
    assert written_files(manifest(tool="other 1.0")) is None
    assert written_files(manifest(outputs=[{"file": "../x", "kind": "labelmap"}])) is None
    assert written_files(manifest(outputs=[{"kind": "labelmap"}])) is None
