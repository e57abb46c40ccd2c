"""A cohort read from a real Orthanc (DICOMweb) and its DICOM results sent back (STOW-RS, or C-STORE to a
pynetdicom storage SCP): round trips, refusals and failures of the server.

Oracles: Orthanc's own REST listing (what it holds), highdicom (the objects read back), the run's local
files (byte for byte the same pixel data and UIDs).
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests

from SegUncertaintyLib import cli
from SegUncertaintyLib.cohort.pacs import Destination, retrieve
from SegUncertaintyLib.core.errors import PacsError, UsageError
from SegUncertaintyLib.io.dicomweb import (
    ENV_PASSWORD,
    ENV_TOKEN,
    ENV_USER,
    DicomWeb,
    check_url,
    parse_dimse,
    read_credentials,
)
from Testing.support import orthanc
from Testing.support.cut_proxy import CutProxy
from Testing.support.dicom_series import volume, write_series
from Testing.support.orthanc import HOST, Orthanc, free_port, private_authority
from Testing.support.tiny_models import write_threshold_model

pytestmark = [pytest.mark.pacs, pytest.mark.dicom]

STUDY = "1.2.826.0.1.3680043.2.1125.9"  # write_series' study
SERIES = ("1.2.826.0.1.3680043.2.1125.9.61", "1.2.826.0.1.3680043.2.1125.9.62")


def _series(tmp_path: Path, uid: str, seed: int = 0) -> list[Path]:
    array = (volume((5, 12, 10), seed) % 1000).astype(np.int16)
    array[1:4, 3:9, 3:8] += 600
    return write_series(tmp_path / "src" / uid, array, uid, f"CT {uid[-2:]}", modality="CT")


def _model(folder: Path) -> Path:
    write_threshold_model(folder)
    card = json.loads((folder / "card.json").read_text())
    card["preprocessing"]["intensity"] = {"method": "window", "lower": 0, "upper": 1000}
    card["anatomic_region"] = {"region": ["SCT", "818981001", "Abdomen"], "laterality": "U"}
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def _cohort(server, out: Path, model: Path, *extra: str) -> list[str]:
    return ["cohort", "--dicomweb", server.dicomweb, "--study", STUDY, "--out", str(out), "--model", str(model),
            "--method", "mc_dropout", "--samples", "3", "--maps", "entropy", "--progress", "none", "--no-overview",
            *extra]


def _worklist(out: Path) -> list[dict]:
    with (out / "worklist.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _local_objects(case: Path) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in (case / "dicom").glob("*.dcm")}


# -- options, credentials ---------------------------------------------------------------------------
def test_credentials_come_from_the_environment_or_a_file_and_are_never_shown(tmp_path):
    basic = read_credentials(environ={ENV_USER: "alice", ENV_PASSWORD: "pw-123"})
    assert (basic.user, basic.password, basic.token) == ("alice", "pw-123", None)
    assert "pw-123" not in repr(basic) and "alice" not in repr(basic)
    assert read_credentials(environ={}) is None
    file = tmp_path / "creds"
    file.write_text(f"# PACS\n{ENV_TOKEN}=tok-9\n")
    assert read_credentials(file, environ={ENV_USER: "x", ENV_PASSWORD: "y"}).token == "tok-9"
    file.write_text("password: pw-123\n")
    with pytest.raises(UsageError, match="line 1") as refused:
        read_credentials(file)
    assert "pw-123" not in str(refused.value)
    with pytest.raises(UsageError, match="without"):
        read_credentials(environ={ENV_USER: "alice"})


def test_urls_with_credentials_and_bad_dimse_addresses_are_refused():
    assert check_url("http://127.0.0.1:8042/dicom-web/") == "http://127.0.0.1:8042/dicom-web"
    for bad in ("http://alice:pw@host/dicom-web", "ftp://host/x", "host:8042", "http://host/x?token=1"):
        with pytest.raises(UsageError):
            check_url(bad)
    assert parse_dimse("PACS@10.0.0.5:104") == ("PACS", "10.0.0.5", 104)
    for bad in ("PACS@host", "@host:104", "A" * 17 + "@host:104", "PACS@host:0", "PACS@host:70000"):
        with pytest.raises(UsageError):
            parse_dimse(bad)


def test_cohort_pacs_options_are_checked_before_anything_is_read(tmp_path, capsys):
    out = tmp_path / "c"
    for argv in (["cohort", "--out", str(out), "--study", "1.2.3"],
                 ["cohort", "--out", str(out), "--dicomweb", "http://127.0.0.1:9/dicom-web"],
                 ["cohort", str(tmp_path), "--out", str(out), "--store"],
                 ["cohort", "--out", str(out), "--dicomweb", "http://u:p@127.0.0.1:9/x", "--study", "1.2"],
                 ["send", str(tmp_path)]):
        assert cli.main(argv) == 2, argv
    assert not out.exists()
    assert "p@" not in capsys.readouterr().err


# -- failures of the server -------------------------------------------------------------------------
def test_wrong_or_missing_credentials_exit_7_in_one_line_without_the_password(orthanc_auth, tmp_path, capsys,
                                                                            monkeypatch):
    orthanc_auth.upload(_series(tmp_path, SERIES[0]))
    out = tmp_path / "c"
    monkeypatch.setenv(ENV_USER, "alice")
    monkeypatch.setenv(ENV_PASSWORD, "wrong-pw-77")
    assert cli.main(["cohort", "--dicomweb", orthanc_auth.dicomweb, "--study", STUDY, "--out", str(out)]) == 7
    err = capsys.readouterr().err
    assert "401" in err and "wrong-pw-77" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.delenv(ENV_USER)
    monkeypatch.delenv(ENV_PASSWORD)
    assert cli.main(["cohort", "--dicomweb", orthanc_auth.dicomweb, "--study", STUDY, "--out", str(out)]) == 7
    assert "401" in capsys.readouterr().err
    # the right ones, from a file: the search succeeds and the series lands in the cache
    file = tmp_path / "creds"
    file.write_text(f"{ENV_USER}=alice\n{ENV_PASSWORD}=s3cret-pw\n")
    server = DicomWeb(orthanc_auth.dicomweb, read_credentials(file))
    assert [s.series for s in server.find_series([STUDY])] == [SERIES[0]]


def test_a_server_that_is_down_or_silent_exits_7_and_deletes_nothing(tmp_path, capsys):
    out = tmp_path / "c"
    out.mkdir()
    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert cli.main(["cohort", "--dicomweb", down, "--study", STUDY, "--out", str(out), "--timeout", "2"]) == 7
    assert "Cannot reach" in capsys.readouterr().err
    silent = __import__("socket").socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web"
    started = time.monotonic()
    assert cli.main(["cohort", "--dicomweb", url, "--study", STUDY, "--out", str(out), "--timeout", "1"]) == 7
    assert "did not answer within 1 s" in capsys.readouterr().err and time.monotonic() - started < 10
    silent.close()
    assert sorted(p.name for p in out.iterdir()) == ["cohort.json"]  # the folder is ours; nothing else written


def _own_orthanc(folder: Path, **options) -> Orthanc:
    if not orthanc.available():
        pytest.skip("needs Debian's orthanc and orthanc-dicomweb (install.sh installs them as root)")
    return Orthanc(folder, **options).start()


@pytest.mark.slow
def test_tls_is_verified_and_a_ca_bundle_names_a_private_authority(tmp_path, capsys, monkeypatch):
    """HTTPS with a certificate for 127.0.0.1 from a private CA (a TLS front of the real Orthanc: Debian 12's
    Orthanc crashes serving HTTPS itself, Testing/support/orthanc.py): refused without --ca-bundle (exit 7,
    one line), read, segmented and stored with it, also where REQUESTS_CA_BUNDLE names the system's
    authorities (requests would let it replace the bundle named)."""
    import certifi

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    ca, pem = private_authority(tmp_path / "pki")
    server = _own_orthanc(tmp_path / "orthanc")
    proxy = CutProxy(server.url, None, certificate=str(pem))
    try:
        server.upload(_series(tmp_path, SERIES[0]))
        argv = _cohort(server, tmp_path / "cohort", _model(tmp_path / "model"), "--store")
        argv[argv.index("--dicomweb") + 1] = f"{proxy.url}/dicom-web"
        assert proxy.url.startswith("https://")
        assert cli.main(argv) == 7
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not verified" in err and "--ca-bundle" in err
        assert cli.main([*argv, "--ca-bundle", str(ca)]) == 0
        (row,) = _worklist(tmp_path / "cohort")
        local = _local_objects(tmp_path / "cohort" / row["output"])
        assert row["stored"] == f"{len(local)}/{len(local)}" and row["stored_to"] == f"{proxy.url}/dicom-web"
        assert set(local) <= DicomWeb(server.dicomweb).instance_uids(STUDY)
    finally:
        proxy.close()
        server.stop()


@pytest.mark.slow
def test_a_403_on_storing_exits_7_in_one_line_and_keeps_everything(tmp_path, capsys):
    """Orthanc answers 403 to every POST (a Lua IncomingHttpRequestFilter: a read-only account)."""
    lua = "function IncomingHttpRequestFilter(method, uri, ip, username, headers)\n  return method ~= 'POST'\nend\n"
    server = _own_orthanc(tmp_path / "orthanc", lua=lua)
    try:
        for path in _series(tmp_path, SERIES[0]):  # uploads are POSTs too: put the series in by C-STORE
            assert _dimse_send(server, path) == 0
        out = tmp_path / "cohort"
        assert cli.main(_cohort(server, out, _model(tmp_path / "model"), "--store")) == 7
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert "refused access (403 Forbidden)" in last and "while storing" in last
        (row,) = _worklist(out)
        assert row["status"] == "done" and "403" in row["store_error"] and row["stored"].startswith("0/")
        assert _local_objects(out / row["output"])
    finally:
        server.stop()


def test_a_409_from_orthanc_is_one_line(orthanc_server, tmp_path):
    """STOW-RS of an instance to another study's resource: Orthanc answers 409 Conflict."""
    dataset = pydicom.dcmread(_series(tmp_path, SERIES[0])[0])
    with pytest.raises(PacsError) as refused:
        DicomWeb(orthanc_server.dicomweb).store([dataset], study="1.2.826.0.1.3680043.2.1125.999")
    assert str(refused.value) == f"{orthanc_server.dicomweb} refused the request (409 Conflict) while storing"


def _dimse_send(server: Orthanc, path: Path) -> int:
    from pynetdicom import AE

    dataset = pydicom.dcmread(path)
    ae = AE(ae_title="UPLOADER")
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate(HOST, server.dicom_port, ae_title=server.aet)
    try:
        return assoc.send_c_store(dataset).Status
    finally:
        assoc.release()


def test_a_series_that_changes_between_listing_and_retrieval_is_refused(orthanc_server, tmp_path):
    files = _series(tmp_path, SERIES[0])
    orthanc_server.upload(files[:-1])
    server = DicomWeb(orthanc_server.dicomweb)
    (remote,) = server.find_series([STUDY])

    class Growing(DicomWeb):  # the real server; the last slice arrives after the listing
        def retrieve_series(self, study, series):
            orthanc_server.upload(files[-1:])
            return super().retrieve_series(study, series)

    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(PacsError, match=r"changed on .* \(4 instances listed, 5 retrieved"):
        retrieve(Growing(orthanc_server.dicomweb), remote, cache)
    assert list(cache.iterdir()) == []
    folder = retrieve(server, remote, cache)  # complete now: retrieved, with its checksum record
    record = json.loads((cache / f"{SERIES[0]}.json").read_text())
    assert len(record["instances"]) == 5 and len(list(folder.glob("*.dcm"))) == 5
    stamp = (folder / "1.dcm").stat().st_mtime_ns
    assert retrieve(server, remote, cache) == folder and (folder / "1.dcm").stat().st_mtime_ns == stamp  # cached
    (folder / "1.dcm").write_bytes((folder / "1.dcm").read_bytes()[:-2] + b"\0\0")  # damaged: retrieved again
    retrieve(server, remote, cache)
    assert json.loads((cache / f"{SERIES[0]}.json").read_text())["sha256"] == record["sha256"]


@pytest.mark.slow
def test_a_series_that_changes_in_a_cohort_fails_only_its_case(orthanc_server, tmp_path, monkeypatch, capsys):
    """The real server gains the last slice of the second series between listing and retrieval: that case
    is failed with the reason in worklist.csv, the first series is segmented, exit 8; the next run reads the
    now complete series as the same case."""
    orthanc_server.upload(_series(tmp_path, SERIES[0]))
    growing = _series(tmp_path, SERIES[1], seed=3)
    orthanc_server.upload(growing[:-1])
    retrieve_series = DicomWeb.retrieve_series

    def arrives_while_read(self, study, series):
        if series == SERIES[1] and len(orthanc_server.instances()) == 9:
            orthanc_server.upload(growing[-1:])
        return retrieve_series(self, study, series)

    monkeypatch.setattr(DicomWeb, "retrieve_series", arrives_while_read)
    model = _model(tmp_path / "model")
    out = tmp_path / "cohort"
    assert cli.main(_cohort(orthanc_server, out, model)) == 8
    assert "1 case(s) failed" in capsys.readouterr().err
    rows = {r["status"]: r for r in _worklist(out)}
    assert sorted(rows) == ["done", "failed"] and len(_worklist(out)) == 2
    assert re.search(r"Series .*\.62 changed on .* \(4 instances listed, 5 retrieved", rows["failed"]["error"])
    assert rows["failed"]["output"] == "" and not (out / "dicomweb" / SERIES[1]).exists()
    assert (out / rows["done"]["output"] / "segmentation.nrrd").is_file()
    monkeypatch.undo()
    assert cli.main(_cohort(orthanc_server, out, model)) == 0
    again = {r["case"]: r["status"] for r in _worklist(out)}
    assert again == {rows["done"]["case"]: "skipped", rows["failed"]["case"]: "done"}  # the same case, now read


# -- round trips ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_round_trip_two_series_store_query_back_and_no_duplicates(orthanc_server, tmp_path):
    for uid in SERIES:  # a study with two series
        orthanc_server.upload(_series(tmp_path, uid, seed=len(uid)))
    before = set(orthanc_server.instances())
    model = _model(tmp_path / "model")
    out = tmp_path / "cohort"
    assert cli.main(_cohort(orthanc_server, out, model, "--store")) == 0
    rows = _worklist(out)
    assert sorted(r["status"] for r in rows) == ["done", "done"]
    new = set(orthanc_server.instances()) - before
    server = DicomWeb(orthanc_server.dicomweb)
    for row in rows:
        local = _local_objects(out / row["output"])
        assert row["stored_to"] == orthanc_server.dicomweb and row["stored"] == f"{len(local)}/{len(local)}"
        assert set(local) <= server.instance_uids(STUDY)  # queried back by QIDO-RS
        seg_uid = next(u for u, p in local.items() if p.name == "segmentation.dcm")
        seg_series = str(pydicom.dcmread(local[seg_uid], stop_before_pixels=True).SeriesInstanceUID)
        (remote,) = [d for d in server.retrieve_series(STUDY, seg_series)]
        seg = hd.seg.Segmentation.from_dataset(remote)
        assert np.array_equal(seg.pixel_array, pydicom.dcmread(local[seg_uid]).pixel_array)
        assert str(seg.SeriesInstanceUID) == seg_series and str(seg.StudyInstanceUID) == STUDY
    assert len(new) == sum(len(_local_objects(out / r["output"])) for r in rows)
    # a second --store: cases skipped, every object already there, nothing duplicated
    assert cli.main(_cohort(orthanc_server, out, model, "--store")) == 0
    assert sorted(r["status"] for r in _worklist(out)) == ["skipped", "skipped"]
    assert set(orthanc_server.instances()) == before | new
    json.loads((out / "cohort.json").read_text())  # still a cohort folder: the cache is listed
    assert "dicomweb" in {e["file"] for e in json.loads((out / "cohort.json").read_text())["outputs"]}


@pytest.mark.slow
def test_pacs_gone_mid_store_exits_7_keeps_everything_and_the_next_run_completes(orthanc_server, tmp_path, capsys):
    for uid in SERIES:
        orthanc_server.upload(_series(tmp_path, uid))
    before = set(orthanc_server.instances())
    model = _model(tmp_path / "model")
    out = tmp_path / "cohort"
    proxy = CutProxy(orthanc_server.url, posts_before_cut=1)  # the server leaves after storing one object
    try:
        argv = _cohort(orthanc_server, out, model, "--store")
        argv[argv.index("--dicomweb") + 1] = proxy.url + "/dicom-web"
        assert cli.main(argv) == 7
    finally:
        proxy.close()
    assert proxy.down and proxy.forwarded_posts == 1
    err = capsys.readouterr().err
    assert "Cannot reach" in err.strip().splitlines()[-1] and "Traceback" not in err
    rows = _worklist(out)
    assert sorted(r["status"] for r in rows) == ["done", "done"] and all(r["store_error"] for r in rows)
    assert sorted(r["stored"].split("/")[0] for r in rows) == ["0", "1"]  # what was completed is counted
    assert len(set(orthanc_server.instances()) - before) == 1
    assert all(_local_objects(out / r["output"]) for r in rows)  # nothing local deleted
    assert cli.main(["send", str(out), "--dicomweb", orthanc_server.dicomweb]) == 0
    rows = _worklist(out)
    assert all(r["store_error"] == "" and r["stored"].split("/")[0] == r["stored"].split("/")[1] for r in rows)
    on_server = DicomWeb(orthanc_server.dicomweb).instance_uids(STUDY)
    assert all(set(_local_objects(out / r["output"])) <= on_server for r in rows)
    assert len(set(orthanc_server.instances()) - before) == sum(len(_local_objects(out / r["output"])) for r in rows)


@pytest.mark.slow
def test_store_dimse_half_failed_is_completed_by_the_next_run(orthanc_server, storage_scp, tmp_path, capsys):
    orthanc_server.upload(_series(tmp_path, SERIES[0]))
    model = _model(tmp_path / "model")
    out = tmp_path / "cohort"
    storage_scp.refuse_after = 2
    assert cli.main(_cohort(orthanc_server, out, model, "--store-dimse", storage_scp.address)) == 7
    assert "0xA700" in capsys.readouterr().err
    (row,) = _worklist(out)
    assert row["stored_to"] == f"dimse:{storage_scp.address}" and "0xA700" in row["store_error"]
    assert row["store_checked"] == ""  # the store failed: nothing to say

    assert row["stored"] == f"2/{len(_local_objects(out / row['output']))}"  # the two it completed
    local = _local_objects(out / row["output"])
    assert len(storage_scp.received) == 2 < len(local)
    storage_scp.refuse_after = None
    assert cli.main(_cohort(orthanc_server, out, model, "--store-dimse", storage_scp.address)) == 0
    (row,) = _worklist(out)
    assert row["status"] == "skipped" and row["stored"] == f"{len(local)}/{len(local)}" and not row["store_error"]
    assert row["store_checked"] == "no C-FIND: the node refused an association for it"  # a storage SCP only
    assert set(storage_scp.received) == set(local)  # one copy of each object, by its run-derived UID
    for uid, path in local.items():
        assert storage_scp.received[uid].PixelData == pydicom.dcmread(path).PixelData if "PixelData" in \
            storage_scp.received[uid] else True


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory) -> Path:
    """A run folder of a local CT series segmented with --dicom."""
    root = tmp_path_factory.mktemp("dicom_run")
    _series(root, SERIES[0])
    assert cli.main(["segment", str(root / "src" / SERIES[0]), "--model", str(_model(root / "model")), "--method",
                     "mc_dropout", "--samples", "3", "--maps", "entropy", "--progress", "none", "--no-overview",
                     "--dicom", "--out", str(root / "run")]) == 0
    return root / "run"


def _dimse_orthanc(folder: Path, knows_us: bool) -> Orthanc:
    """A real Orthanc that re-stores what it is sent again (``/changes`` counts every C-STORE it takes) and,
    when ``knows_us``, lists the tool's calling AE among its modalities: it then answers its C-FIND."""
    if not orthanc.available():
        pytest.skip("needs Debian's orthanc and orthanc-dicomweb (install.sh installs them as root)")
    return Orthanc(folder, modalities={"SEGUNCERTAINTY": (HOST, free_port())} if knows_us else None,
                   settings={"OverwriteInstances": True}).start()


def _changes(server: Orthanc) -> int:
    return server.get("/changes").json()["Last"]


@pytest.mark.slow
def test_store_dimse_sends_only_what_a_c_find_does_not_find(dicom_run, tmp_path, capsys):
    local = _local_objects(dicom_run)
    server = _dimse_orthanc(tmp_path / "orthanc", knows_us=True)
    try:
        assert cli.main(["send", str(dicom_run), "--store-dimse", server.dimse]) == 0
        web = DicomWeb(server.dicomweb)
        assert web.instance_uids(STUDY) == set(local)
        first = _changes(server)
        assert cli.main(["send", str(dicom_run), "--store-dimse", server.dimse]) == 0  # all there: nothing sent
        assert _changes(server) == first and f"Stored {len(local)} DICOM objects" in capsys.readouterr().out
        gone = next(iter(local))  # a store that lost one object: only that one is sent again
        [found] = requests.post(f"{server.url}/tools/lookup", data=gone, timeout=30).json()
        assert requests.delete(f"{server.url}/instances/{found['ID']}", timeout=30).ok
        assert cli.main(["send", str(dicom_run), "--store-dimse", server.dimse]) == 0
        assert web.instance_uids(STUDY) == set(local)
        changes = server.get("/changes", params={"since": first, "limit": 100}).json()["Changes"]
        assert [c["ChangeType"] for c in changes if c["ResourceType"] == "Instance"] == ["NewInstance"]
    finally:
        server.stop()


@pytest.mark.slow
def test_store_dimse_to_a_node_that_answers_no_c_find_sends_everything_and_says_so(dicom_run, tmp_path, capsys):
    """Orthanc refuses C-FIND from an AE it does not know (it aborts the association): every object is sent,
    each time, and worklist.csv says why."""
    local = _local_objects(dicom_run)
    server = _dimse_orthanc(tmp_path / "orthanc", knows_us=False)
    cohort = tmp_path / "cohort"
    try:
        assert cli.main(["cohort", str(dicom_run.parent / "src"), "--out", str(cohort), "--model",
                         str(dicom_run.parent / "model"), "--method", "mc_dropout", "--samples", "3", "--maps",
                         "entropy", "--progress", "none", "--no-overview", "--store-dimse", server.dimse]) == 0
        (row,) = _worklist(cohort)
        assert row["store_checked"] == "no C-FIND: the node aborted the query (is this AE allowed to query it?)"
        assert row["stored"] == f"{len(local)}/{len(local)}"
        first = _changes(server)
        assert cli.main(["send", str(cohort), "--store-dimse", server.dimse]) == 0
        changes = server.get("/changes", params={"since": first, "limit": 100}).json()["Changes"]
        assert sum(c["ResourceType"] == "Instance" for c in changes) == len(local)  # each one sent again
    finally:
        server.stop()


def test_destination_needs_exactly_one_target():
    with pytest.raises(UsageError):
        Destination()
    with pytest.raises(UsageError):
        Destination(dimse="nonsense")
