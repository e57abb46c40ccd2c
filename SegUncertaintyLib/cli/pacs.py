"""The PACS options of ``cohort`` and ``send``, and ``seguncertainty send FOLDER`` (README 'Hospital use')."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import UsageError
from .common import plural


def add_pacs_options(parser: argparse.ArgumentParser, reading: bool) -> None:
    """The PACS options of ``cohort`` (``reading``) and ``send`` (README 'Hospital use')."""
    pacs = parser.add_argument_group("PACS (credentials: SEGUNCERTAINTY_DICOMWEB_USER/_PASSWORD or _TOKEN, or "
                                     "--credentials FILE)")
    pacs.add_argument("--dicomweb", default=None, metavar="URL",
                      help="DICOMweb service root, e.g. http://host:8042/dicom-web" + (
                          ": read the cohort's CT and MR series from it" if reading else ": send to it (STOW-RS)"))
    if reading:
        pacs.add_argument("--study", action="extend", nargs="+", default=[], metavar="UID",
                          help="with --dicomweb: the StudyInstanceUIDs to read")
        pacs.add_argument("--query", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                          help="with --dicomweb: a QIDO-RS search, e.g. PatientID=123 StudyDate=20240101-20240131")
        pacs.add_argument("--series", action="extend", nargs="+", default=[], metavar="UID",
                          help="with --dicomweb: these SeriesInstanceUIDs (only these, with --study or --query)")
        pacs.add_argument("--store", action="store_true",
                          help="send the DICOM results to the --dicomweb server (STOW-RS); implies --dicom")
    pacs.add_argument("--store-dimse", default=None, metavar="AET@HOST:PORT",
                      help="send the DICOM results by C-STORE to this DICOM node" + ("; implies --dicom" if reading
                                                                                     else ""))
    pacs.add_argument("--credentials", default=None, metavar="FILE",
                      help="file of SEGUNCERTAINTY_DICOMWEB_USER=..., _PASSWORD=... or _TOKEN=... lines")
    pacs.add_argument("--ca-bundle", default=None, metavar="FILE",
                      help="CA certificates (PEM) to verify the server's TLS certificate with (default: the system's)")
    pacs.add_argument("--timeout", type=float, default=30.0, metavar="S",
                      help="seconds to wait for each answer of the server (default: %(default)s)")


def dicomweb_server(args):
    """The DICOMweb server ``--dicomweb`` names, with the credentials and CA bundle; UsageError before any
    request on a bad URL, credentials file or timeout."""
    from ..io.dicomweb import DicomWeb, read_credentials

    if not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    return DicomWeb(args.dicomweb, read_credentials(args.credentials), args.ca_bundle, args.timeout)


def parse_query(items: list[str]) -> dict[str, str]:
    pairs = [item.partition("=") for item in items]
    if any(not key or not sep or not value for key, sep, value in pairs):
        raise UsageError(f"--query expects KEY=VALUE (a DICOM keyword or tag), got {' '.join(items)!r}")
    return {key: value for key, _, value in pairs}


def add_parser(sub) -> None:
    send = sub.add_parser("send", help="send the DICOM objects of a run or cohort folder to a PACS")
    send.add_argument("folder", help="a run folder written with --dicom, or a cohort folder")
    add_pacs_options(send, reading=False)


def command(args) -> int:
    from ..cohort.pacs import Destination, send_folder

    if bool(args.dicomweb) == bool(args.store_dimse):
        raise UsageError("send: give --dicomweb URL or --store-dimse AET@HOST:PORT (one of them)")
    destination = Destination(web=dicomweb_server(args)) if args.dicomweb else Destination(dimse=args.store_dimse)
    stored, cases = send_folder(Path(args.folder), destination)
    print(f"Stored {plural(stored, 'DICOM object')} of {plural(cases, 'run')} on {destination.label}")
    return 0
