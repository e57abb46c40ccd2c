"""Module-level tasks for the executor tests (importable by Ray and Dask worker processes through
PYTHONPATH): each "loads a model" once per process, as cohort/worker.py's process_case does."""

import os
import time

LOADS = 0  # "model loads" in this process
_MODEL = None


def _model():
    global LOADS, _MODEL
    if _MODEL is None:
        LOADS += 1
        _MODEL = {"scale": 3}
    return _MODEL


def square_task(item: dict) -> dict:
    """{"x": int, "sleep": s, "die": bool} -> {"value": scale * x**2, "pid", "loads", "omp_threads"}; "die" ends the
    process at once, as a segfault or the out-of-memory killer would."""
    model = _model()
    if item.get("die"):
        os._exit(3)
    time.sleep(item.get("sleep", 0.0))
    return {"status": "done", "value": model["scale"] * item["x"] ** 2, "pid": os.getpid(), "loads": LOADS,
            "omp_threads": os.environ.get("OMP_NUM_THREADS")}
