"""``seguncertainty cohort``: many volumes (files, folders, CSV files or a PACS) -> case folders and a
review worklist."""

from __future__ import annotations

import sys
from pathlib import Path

from ..cohort.executors import EXECUTORS
from ..core.errors import COHORT_CASES_FAILED, UsageError
from .common import CancelFlag, add_segment_options, plural
from .pacs import add_pacs_options, dicomweb_server, parse_query


def add_parser(sub) -> None:
    cohort = sub.add_parser("cohort", help="segment many volumes; write a review worklist ranked by uncertainty")
    cohort.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image files (NIfTI, NRRD, MHA), folders (searched recursively for those and for "
                             "DICOM series) and CSV files with a 'path' column (optional 'case' column); or none "
                             "with --dicomweb")
    cohort.add_argument("--out", required=True, help="cohort folder: one sub-folder per case and worklist.csv")
    add_segment_options(cohort)
    cohort.add_argument("--workers", type=int, default=1, help="cases run at the same time (default: %(default)s)")
    cohort.add_argument("--executor", default="local", choices=EXECUTORS,
                        help="local worker processes, or a Ray or Dask cluster (default: %(default)s)")
    cohort.add_argument("--address", default=None,
                        help="address of a running Ray or Dask cluster to join (default: start a local one)")
    add_pacs_options(cohort, reading=True)


def command(args) -> int:
    from ..cohort.pacs import Destination, fetch_series, store_cohort
    from ..cohort.run import run_cohort
    from ..core.options import SegmentOptions

    if args.store or args.store_dimse:
        args.dicom = True
    options = SegmentOptions.from_args(args).check()
    if bool(args.inputs) == bool(args.dicomweb):
        raise UsageError("cohort: give INPUT paths or --dicomweb URL (not both)")
    if (args.study or args.query or args.series) and not args.dicomweb:
        raise UsageError("--study, --query and --series need --dicomweb URL")
    if args.dicomweb and not (args.study or args.query or args.series):
        raise UsageError("--dicomweb needs --study UID..., --series UID... or --query KEY=VALUE... (what to read)")
    if args.store and not args.dicomweb:
        raise UsageError("--store sends to the --dicomweb server; for another node use --store-dimse AET@HOST:PORT")
    server = dicomweb_server(args) if args.dicomweb else None
    query = parse_query(args.query)
    fetch = (lambda root: fetch_series(server, root, args.study, query, args.series)) if server else None
    destination = Destination(dimse=args.store_dimse) if args.store_dimse else Destination(web=server) \
        if args.store else None
    cancel = CancelFlag()
    try:
        rows = run_cohort(args.inputs, args.out, options, args.workers, args.executor, args.address,
                          args.progress, cancel, fetch)
        if destination is not None:
            stored, rows = store_cohort(Path(args.out), destination, rows)
            print(f"Stored {plural(stored, 'DICOM object')} on {destination.label}", file=sys.stderr)
    finally:
        cancel.restore()
    failed = [row["case"] for row in rows if row["status"] == "failed"]
    counts = {status: sum(row["status"] == status for row in rows) for status in ("done", "skipped", "failed")}
    stale = sum(row["status"] == "stale" for row in rows)
    print(f"Wrote {Path(args.out) / 'worklist.csv'}: {counts['done']} done, {counts['skipped']} skipped, "
          f"{counts['failed']} failed" + (f", {stale} stale (earlier settings)" if stale else ""), file=sys.stderr)
    if failed:
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        print(f"seguncertainty: error: {len(failed)} case(s) failed (errors in worklist.csv): {shown}",
              file=sys.stderr)
        return COHORT_CASES_FAILED
    return 0
