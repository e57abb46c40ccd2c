"""Talking to a PACS: DICOMweb (QIDO-RS search, WADO-RS retrieval, STOW-RS storage; dicomweb-client) and
DIMSE C-FIND and C-STORE (pynetdicom).

Credentials come from the environment (``SEGUNCERTAINTY_DICOMWEB_USER`` and ``_PASSWORD`` for HTTP basic
authentication, or ``_TOKEN`` for a bearer token) or from a file the user names (``KEY=VALUE`` lines with
those names), never from the command line or a URL; :class:`Credentials` never shows them. TLS
certificates are verified (with the system's authorities, or a CA bundle the user names). Every failure of
the server (not reachable, timeout, TLS, 401, 403, 409, any other HTTP error, a C-STORE refused) is a
:class:`PacsError` (exit 7) with one line naming the server and the problem; this module deletes nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..core.errors import PacsError, UsageError

ENV_USER = "SEGUNCERTAINTY_DICOMWEB_USER"
ENV_PASSWORD = "SEGUNCERTAINTY_DICOMWEB_PASSWORD"
ENV_TOKEN = "SEGUNCERTAINTY_DICOMWEB_TOKEN"
IMAGE_MODALITIES = ("CT", "MR")  # what a cohort reads from a PACS
DEFAULT_TIMEOUT = 30.0  # seconds per request
T = TypeVar("T")


@dataclass(frozen=True)
class Credentials:
    """HTTP basic (``user``, ``password``) or bearer (``token``) credentials; never shown in a repr."""

    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"Credentials({'token' if self.token else 'basic' if self.user else 'none'})"


def read_credentials(path: str | os.PathLike | None = None, environ: dict | None = None) -> Credentials | None:
    """The credentials of the file ``path`` (``KEY=VALUE`` lines with the ``ENV_*`` names; ``#`` comments), else
    of the environment; None when neither names any. UsageError (exit 2) on an unreadable or malformed file,
    a user without a password, or both a user and a token (the message never holds a value)."""
    values = dict(os.environ if environ is None else environ)
    where = "the environment"
    if path is not None:
        where = f"credentials file {path}"
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"Cannot read credentials file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
        values = {}
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep or key.strip() not in (ENV_USER, ENV_PASSWORD, ENV_TOKEN):
                raise UsageError(f"Credentials file {path} line {number}: expected {ENV_USER}=..., {ENV_PASSWORD}=... "
                                 f"or {ENV_TOKEN}=...")
            values[key.strip()] = value.strip()
    user, password, token = (values.get(k) or None for k in (ENV_USER, ENV_PASSWORD, ENV_TOKEN))
    if token and (user or password):
        raise UsageError(f"{where} gives both a token ({ENV_TOKEN}) and a user or password; give one of them")
    if bool(user) != bool(password):
        raise UsageError(f"{where} gives {ENV_USER if user else ENV_PASSWORD} without "
                         f"{ENV_PASSWORD if user else ENV_USER}")
    return Credentials(user, password, token) if user or token else None


def check_url(url: str) -> str:
    """``url`` without a trailing slash; UsageError for anything but http(s)://host[:port][/path], or a URL
    holding credentials (``user:password@``: they would show in process lists and logs)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--dicomweb expects an http:// or https:// URL, got {url!r}")
    if parts.username or parts.password:
        raise UsageError(f"--dicomweb URL must not hold credentials; set {ENV_USER}/{ENV_PASSWORD} or {ENV_TOKEN} in "
                         "the environment, or name a --credentials file")
    if parts.query or parts.fragment:
        raise UsageError(f"--dicomweb expects the service's base URL without query or fragment, got {url!r}")
    return url.rstrip("/")


_AET = re.compile(r"[ -~]{1,16}")


def parse_dimse(text: str) -> tuple[str, str, int]:
    """``AET@HOST:PORT`` -> (ae title, host, port); UsageError on anything else."""
    match = re.fullmatch(r"([^@]+)@(\[[^\]]+\]|[^:@]+):(\d{1,5})", text)
    if not match or not _AET.fullmatch(match[1]) or "\\" in match[1] or not 0 < int(match[3]) < 65536:
        raise UsageError(f"--store-dimse expects AET@HOST:PORT (an AE title of 1-16 characters), got {text!r}")
    return match[1].strip(), match[2].strip("[]"), int(match[3])


def _value(result: dict, tag: str) -> Any:
    """The first value of attribute ``tag`` (8 hex digits) of a DICOM JSON object, or None."""
    values = result.get(tag, {}).get("Value") or [None]
    return values[0]


@dataclass(frozen=True)
class RemoteSeries:
    """One series a QIDO-RS search found."""

    study: str
    series: str
    modality: str
    description: str
    instances: int | None


def _session_class():
    import requests

    class Session(requests.Session):
        """A session whose CA bundle (``verify``: the file the user named) wins over REQUESTS_CA_BUNDLE and
        CURL_CA_BUNDLE: plain requests lets those environment variables replace a session's own
        (psf/requests#3829), so --ca-bundle was silently ignored wherever they are set."""

        def merge_environment_settings(self, url, proxies, stream, verify, cert):
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if verify is None and isinstance(self.verify, str):
                settings["verify"] = self.verify
            return settings

    return Session


class DicomWeb:
    """A DICOMweb service (its base URL, e.g. ``http://host:8042/dicom-web``); every call raises PacsError on
    the server's failures."""

    def __init__(self, url: str, credentials: Credentials | None = None, ca_bundle: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        from dicomweb_client.api import DICOMwebClient

        self.url = check_url(url)
        self.timeout = timeout
        session = _session_class()()
        session.verify = ca_bundle or True  # never off: a CA bundle is the way to trust a private authority
        if ca_bundle is not None and not Path(ca_bundle).is_file():
            raise UsageError(f"--ca-bundle {ca_bundle} is not a file")
        if credentials is not None and credentials.token:
            session.headers["Authorization"] = f"Bearer {credentials.token}"
        elif credentials is not None:
            session.auth = (credentials.user, credentials.password)
        self.session = session
        self.client = DICOMwebClient(self.url, session=session, timeout=timeout)
        # its default retries a timeout 5 times with exponential waits (and logs each traceback): --timeout
        # is the user's bound on waiting, and the next run resumes
        self.client.set_http_retry_params(retry=False)

    def call(self, what: str, function: Callable[..., T], *args, **kwargs) -> T:
        """``function(*args, **kwargs)``, its failures as one-line PacsErrors saying ``what`` was being done."""
        import requests

        try:
            return function(*args, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise PacsError(f"TLS certificate of {self.url} not verified while {what} ({_reason(exc)}); name the "
                            "authority's certificate with --ca-bundle FILE") from None
        except requests.exceptions.Timeout:
            raise PacsError(f"{self.url} did not answer within {self.timeout:g} s while {what}") from None
        except requests.exceptions.ConnectionError as exc:
            raise PacsError(f"Cannot reach {self.url} while {what} ({_reason(exc)})") from None
        except requests.exceptions.HTTPError as exc:
            raise PacsError(_http_message(self.url, what, exc.response)) from None
        except requests.exceptions.RequestException as exc:
            raise PacsError(f"{self.url} failed while {what}: {type(exc).__name__}") from None

    def find_series(self, studies: Sequence[str] = (), query: dict[str, str] | None = None,
                    series: Sequence[str] = ()) -> list[RemoteSeries]:
        """The CT and MR series of ``studies`` (each StudyInstanceUID), or of the QIDO-RS ``query`` (attribute
        keyword or tag -> value, e.g. PatientID, StudyDate), restricted to ``series`` UIDs when given (alone:
        those series, wherever they are); sorted by study and series UID."""
        found: dict[str, RemoteSeries] = {}
        fields = ["Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances"]
        searches = [(s, dict(query or {})) for s in studies] or (
            [(None, dict(query))] if query else [(None, {"SeriesInstanceUID": s}) for s in series])
        for study, filters in searches:
            results = self.call("searching for series", self.client.search_for_series, study_instance_uid=study,
                                search_filters=filters, fields=fields, get_remaining=True)
            for result in results:
                item = RemoteSeries(_value(result, "0020000D") or study or "", _value(result, "0020000E") or "",
                                    _value(result, "00080060") or "", _value(result, "0008103E") or "",
                                    _value(result, "00201209"))
                if item.modality in IMAGE_MODALITIES and (not series or item.series in series) and item.series:
                    found[item.series] = item
        return sorted(found.values(), key=lambda s: (s.study, s.series))

    def instance_uids(self, study: str, series: str | None = None) -> set[str]:
        """The SOPInstanceUIDs the server holds in ``study`` (and ``series``)."""
        results = self.call("listing instances", self.client.search_for_instances, study_instance_uid=study,
                            series_instance_uid=series, fields=["SOPInstanceUID"], get_remaining=True)
        return {_value(r, "00080018") for r in results} - {None}

    def retrieve_series(self, study: str, series: str) -> list:
        """The series' instances (pydicom Datasets), by WADO-RS."""
        return self.call("retrieving series", self.client.retrieve_series, study, series)

    def store(self, datasets: Sequence, study: str | None = None) -> None:
        """STOW-RS ``datasets`` (one study) in one request, to the study's resource when ``study`` is given (the
        server then refuses, 409, an instance of another study); PacsError naming the instances it refused."""
        if not datasets:
            return
        answer = self.call("storing", self.client.store_instances, list(datasets), study_instance_uid=study)
        failed = getattr(answer, "FailedSOPSequence", None) or []
        if failed:
            raise PacsError(f"{self.url} refused {len(failed)} of {len(datasets)} instance(s) while storing "
                            f"(failure reason {getattr(failed[0], 'FailureReason', 'not given')})")


def _reason(exc: Exception) -> str:
    """The innermost cause of a requests error, without the URL (already named) and on one line."""
    text = str(exc.args[0] if exc.args else exc)
    for pattern in (r"\[SSL: [^\]]+\][^')\"]*", r"Connection refused", r"Name or service not known",
                    r"timed out", r"Connection reset by peer", r"Remote end closed connection[^')\"]*"):
        match = re.search(pattern, text)
        if match:
            return match[0].strip()
    return type(exc).__name__


_STATUS = {401: "refused the credentials (401 Unauthorized): set " + ENV_USER + "/" + ENV_PASSWORD + " or " +
           ENV_TOKEN + ", or name a --credentials file",
           403: "refused access (403 Forbidden): the credentials lack the permission",
           404: "has no such resource (404 Not Found): is the URL the DICOMweb root?",
           409: "refused the request (409 Conflict)"}


def _http_message(url: str, what: str, response) -> str:
    status = getattr(response, "status_code", None)
    text = _STATUS.get(status, f"answered HTTP {status} {getattr(response, 'reason', '')}".strip())
    return f"{url} {text} while {what}"


def _associate(address: str, calling_aet: str, timeout: float, contexts: Mapping[str, list[str]], refused=PacsError):
    """An association with ``address`` proposing ``contexts`` (abstract syntax -> transfer syntaxes).
    PacsError when the node cannot be reached; ``refused`` (an exception class, or None to return None) when
    it rejects or aborts the association."""
    from pynetdicom import AE

    aet, host, port = parse_dimse(address)
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for abstract, syntaxes in contexts.items():
        ae.add_requested_context(abstract, syntaxes or None)
    try:
        assoc = ae.associate(host, port, ae_title=aet)
    except (OSError, ValueError) as exc:
        raise PacsError(f"Cannot reach DICOM node {address} ({type(exc).__name__})") from None
    if assoc.is_established:
        return assoc
    if refused is None:
        return None
    why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not answered"
    raise refused(f"DICOM node {address}: association {why}")


def dimse_held(address: str, datasets: Sequence, calling_aet: str = "SEGUNCERTAINTY",
               timeout: float = DEFAULT_TIMEOUT) -> tuple[set[str] | None, str]:
    """Which of ``datasets``' SOPInstanceUIDs the node ``address`` holds, by C-FIND (Study Root, IMAGE level,
    one query per series: its StudyInstanceUID and SeriesInstanceUID, SOPInstanceUID returned), and how that
    was found out. (None, why) when the node does not answer C-FIND from this AE (no C-FIND context, the
    association or the query refused or aborted): the caller then sends everything. PacsError when the node
    cannot be reached."""
    from pydicom import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    assoc = _associate(address, calling_aet, timeout, {FIND: []}, refused=None)
    if assoc is None:
        return None, "no C-FIND: the node refused an association for it"
    held: set[str] = set()
    try:
        if not any(c.abstract_syntax == FIND for c in assoc.accepted_contexts):
            return None, "no C-FIND: the node does not support it"
        for study, series in sorted({(str(d.StudyInstanceUID), str(d.SeriesInstanceUID)) for d in datasets}):
            query = Dataset()
            query.QueryRetrieveLevel, query.StudyInstanceUID, query.SeriesInstanceUID = "IMAGE", study, series
            query.SOPInstanceUID = ""
            for status, identifier in assoc.send_c_find(query, FIND):
                code = getattr(status, "Status", None)
                if code in (0xFF00, 0xFF01):  # pending: one matching instance
                    held.add(str(identifier.SOPInstanceUID))
                elif code is None:
                    return None, "no C-FIND: the node aborted the query (is this AE allowed to query it?)"
                elif code != 0x0000:
                    return None, f"no C-FIND: the node refused the query (status 0x{code:04X})"
    finally:
        if assoc.is_established:
            assoc.release()
    return held, "C-FIND"


def dimse_store(address: str, files: Iterable[str | os.PathLike], calling_aet: str = "SEGUNCERTAINTY",
                timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str]:
    """C-STORE to ``address`` (``AET@HOST:PORT``), over one association, the DICOM files the node does not
    hold yet (:func:`dimse_held`; every file when it cannot tell); (files now on the node, how that was
    checked: "C-FIND" or why not). PacsError when the association is refused or aborted, or the node refuses
    an instance: its ``stored``, the files on the node by then."""
    import pydicom

    datasets = [pydicom.dcmread(os.fspath(f)) for f in files]
    if not datasets:
        return 0, ""
    held, checked = dimse_held(address, datasets, calling_aet, timeout)
    missing = [d for d in datasets if held is None or str(d.SOPInstanceUID) not in held]
    stored = len(datasets) - len(missing)
    if not missing:
        return stored, checked
    assoc = _associate(address, calling_aet, timeout, {
        sop_class: [str(d.file_meta.TransferSyntaxUID) for d in missing if str(d.SOPClassUID) == sop_class][:1]
        + ["1.2.840.10008.1.2.1"] for sop_class in sorted({str(d.SOPClassUID) for d in missing})})
    try:
        for ds in missing:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                error = PacsError(f"DICOM node {address} did not answer a C-STORE (connection lost or timed out)")
            elif code not in (0x0000, 0xB000, 0xB006, 0xB007):  # success, or success with a warning
                error = PacsError(f"DICOM node {address} refused instance {ds.SOPInstanceUID} (status 0x{code:04X})")
            else:
                stored += 1
                continue
            error.stored = stored
            raise error
    finally:
        if assoc.is_established:
            assoc.release()
    return stored, checked
