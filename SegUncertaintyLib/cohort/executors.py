"""Where a cohort's cases run: in this process, in local worker processes, on Ray or on Dask.

Every executor calls ``task(item)`` for each item and yields ``(index, result)`` as each one finishes,
in completion order. ``task`` must be a module-level function (it is pickled to the workers), take one
picklable item and return a picklable dict; it records its own errors in that dict. A worker that dies
(killed, out of memory, segfault) gives ``{"status": "failed", "error": ...}`` for its item, and the
other items go on. Worker processes live for the whole run, so what a task caches at module level (the
loaded model) is loaded once per worker.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

EXECUTORS = ("local", "ray", "dask")  # what --executor may name

Task = Callable[[dict], dict]


def worker_failure(exc: BaseException) -> dict:
    """The result recorded for an item whose worker failed outside the task's own error handling."""
    return {"status": "failed", "error": f"worker failed: {type(exc).__name__}: {exc}"}


def run_local(task: Task, items: list[dict], workers: int = 1) -> Iterator[tuple[int, dict]]:
    """``workers`` = 1: one after the other in this process; more: that many spawned processes."""
    if workers <= 1:
        for index, item in enumerate(items):
            yield index, task(item)
        return
    # spawn, not fork: torch's threads and CUDA do not survive a fork
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(task, item): index for index, item in enumerate(items)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    try:
                        yield index, future.result()
                    except BrokenProcessPool as exc:  # a worker died: every pending item is lost with it
                        yield index, worker_failure(exc)
        finally:
            for future in pending:
                future.cancel()


def run_tasks(task: Task, items: list[dict], executor: str = "local", workers: int = 1,
              address: str | None = None) -> Iterator[tuple[int, dict]]:
    """Run ``task`` over ``items`` on ``executor`` with ``workers`` workers (``address``: join a running
    Ray or Dask cluster instead of starting a local one); yields ``(index, result)`` as each finishes."""
    if executor == "local":
        if address:
            raise ValueError("--address applies to --executor ray or dask, not local")
        return run_local(task, items, workers)
    raise NotImplementedError(f"executor {executor!r} is not available yet")
