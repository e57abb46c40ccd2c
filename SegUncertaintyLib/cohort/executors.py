"""Where a cohort's cases run: in this process, in local worker processes, on Ray or on Dask.

Every executor calls ``task(item)`` for each item and yields ``(index, result)`` as each one finishes,
in completion order. ``task`` must be a module-level function (it is pickled to the workers), take one
picklable item and return a picklable dict; it records its own errors in that dict. A worker that dies
(killed, out of memory, segfault) gives ``{"status": "failed", "error": ...}`` for its item, a new worker
takes its place and the other items go on. Worker processes live for the whole run, so what a task caches
at module level (the loaded model) is loaded once per worker.

- ``local``: ``workers`` spawned processes (1: this process), one GPU each when there are GPUs, the
  cores shared out among them (OMP_NUM_THREADS, unless set).
- ``ray``: an actor pool of ``workers`` actors (one process each, spread over the nodes, one GPU each when
  the cluster has GPUs, the cluster's CPUs shared out among them) on a local Ray instance started for the
  run (with this machine's CPUs), or on the running cluster at ``address``.
- ``dask``: a LocalCluster of ``workers`` processes (one task at a time each, the cores shared out among
  them) started for the run, or the running cluster at ``address`` (tasks ask for ``{"GPU": 1}`` when its
  workers declare that resource).

A cluster at ``address`` is joined and left as it was; a local one is stopped at the end, also on
Ctrl-C or SIGTERM (which then raise KeyboardInterrupt here unless the caller handles SIGTERM itself).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait as wait_for

from ..core.errors import SegUncertaintyError, UsageError

EXECUTORS = ("local", "ray", "dask")  # what --executor may name

Task = Callable[[dict], dict]


def worker_failure(exc: BaseException) -> dict:
    """The result recorded for an item whose worker failed outside the task's own error handling."""
    message = " ".join(str(exc).split())  # one line: Ray's and Dask's messages span several
    return {"status": "failed", "error": f"worker failed: {type(exc).__name__}: {message}"[:500]}


def _process_died(exitcode: int | None) -> dict:
    how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    return {"status": "failed", "error": f"worker failed: its process died ({how})"}


# ----------------------------------------------------------------------------------------------- local


def local_gpu_env(worker: int, device_count: int, visible: str | None = None) -> dict[str, str]:
    """Environment for local worker number ``worker`` (0-based): ``CUDA_VISIBLE_DEVICES`` naming one GPU,
    round robin over the ``device_count`` GPUs this process sees (``visible``: this process's own
    CUDA_VISIBLE_DEVICES, whose entries are handed out instead of 0..n-1); {} without GPUs."""
    if device_count <= 0:
        return {}
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    ids = ids[:device_count] or [str(i) for i in range(device_count)]
    return {"CUDA_VISIBLE_DEVICES": ids[worker % len(ids)]}


def _cuda_device_count() -> int:
    """GPUs torch sees here (0 without torch); does not initialize CUDA in this process."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _threads_env(workers: int) -> dict[str, str]:
    """OMP_NUM_THREADS (torch's threads, read when it is imported) for each of ``workers`` worker
    processes on this machine: its cores shared out; {} when the user set it."""
    return {} if "OMP_NUM_THREADS" in os.environ else {"OMP_NUM_THREADS": str(max(1, _cpus() // workers))}


def _local_worker_main(conn, task: Task, env: dict[str, str]) -> None:
    """A local worker process: run ``task`` on each item received until None or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    os.environ.update(env)  # before the task imports torch, so CUDA sees only this worker's GPU
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        try:
            result = task(item)
        except Exception as exc:  # the task should catch its own errors; a bug must not end the worker
            result = worker_failure(exc)
        conn.send(result)


class _LocalWorker:
    """One spawned worker process and the pipe to it; ``index`` is the item it runs (None: idle)."""

    def __init__(self, context, task: Task, env: dict[str, str]):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_local_worker_main, args=(child, task, env), daemon=False)
        self.process.start()
        child.close()
        self.env, self.index = env, None

    def give(self, queue: deque) -> None:
        self.index, item = queue.popleft() if queue else (None, None)
        if self.index is not None:
            self.conn.send(item)

    def stop(self, graceful: bool) -> None:
        if graceful and self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()
        self.conn.close()


def run_local(task: Task, items: list[dict], workers: int = 1) -> Iterator[tuple[int, dict]]:
    """``workers`` = 1: one after the other in this process; more: that many spawned processes (spawn,
    not fork: torch's threads and CUDA do not survive a fork), each given one GPU when there are GPUs."""
    if workers <= 1:
        for index, item in enumerate(items):
            yield index, task(item)
        return
    context = multiprocessing.get_context("spawn")
    device_count = _cuda_device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    threads = _threads_env(workers)
    queue = deque(enumerate(items))
    pool: list[_LocalWorker] = []
    finished = False
    with _sigterm_interrupts():
        try:
            for slot in range(min(workers, len(items))):
                env = {**threads, **local_gpu_env(slot, device_count, visible)}
                pool.append(_LocalWorker(context, task, env))
                pool[-1].give(queue)
            while busy := [w for w in pool if w.index is not None]:
                ready = set(wait_for([w.conn for w in busy] + [w.process.sentinel for w in busy]))
                for slot, worker in enumerate(pool):
                    if worker.index is None or not ready & {worker.conn, worker.process.sentinel}:
                        continue
                    index, result = worker.index, None
                    if worker.conn.poll():
                        with contextlib.suppress(EOFError, OSError):
                            result = worker.conn.recv()
                    if result is None:  # the process died while running this item: a new one replaces it
                        worker.stop(graceful=False)
                        result = _process_died(worker.process.exitcode)
                        pool[slot] = worker = _LocalWorker(context, task, worker.env)
                    worker.give(queue)
                    yield index, result
            finished = True
        finally:
            for worker in pool:
                worker.stop(graceful=finished)


# ------------------------------------------------------------------------------------ shared helpers


def _require(module: str, extra: str):
    """Import ``module`` or refuse with the one command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"--executor {extra} needs the {module!r} package: pip install "
                         f"'seguncertainty[{extra}]'") from None


def _raise_interrupt(*_) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[Callable[[], None]]:
    """While inside: SIGTERM raises KeyboardInterrupt as Ctrl-C does, so the ``finally`` blocks that stop
    local workers and clusters run; a handler the caller installed is kept. Yields a function that puts
    the handler back (Ray's init replaces it). The previous handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = signal.getsignal(signal.SIGTERM)
    handler = _raise_interrupt if previous in (signal.SIG_DFL, None) else previous

    def install() -> None:
        signal.signal(signal.SIGTERM, handler)

    install()
    try:
        yield install
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Silence the named loggers for the run (the CLI's own output stays readable; what they would say
    about a dead worker is in that item's result)."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    yield  # interrupted: they stay silent (Dask's event loop may still report the wait that was cut short)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


# ------------------------------------------------------------------------------------------------- ray


class TaskRunner:
    """A Ray actor's body: one worker process that runs the task on each item it is given."""

    def __init__(self, task: Task):
        self.task = task

    def run(self, item: dict) -> dict:
        return self.task(item)


@contextlib.contextmanager
def _ray_errors_not_printed() -> Iterator[None]:
    """Ray's driver prints the cluster's error messages ("(raylet) A worker died ...") to stdout, where
    they would break the CLI's JSON lines; while inside, they go to the (silenced) "ray" logger."""
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None:  # another Ray version: leave it as it is
        yield
        return

    def to_logger(data: dict, *_, **__) -> None:
        for line in data.get("lines", []):
            logging.getLogger("ray").info("(%s) %s", data.get("pid"), line)

    ray_worker.print_to_stdstream = to_logger
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = original


def _answers(address: str, seconds: float = 5.0) -> bool:
    """Whether something accepts a TCP connection at ``address`` ([scheme://]HOST:PORT); True when the
    address has another form (Ray then judges it)."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        return True
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=seconds):
            return True
    except OSError:
        return False


def cpus_per_actor(node_cpus: list[float], actors: int) -> int:
    """CPUs each of ``actors`` Ray actors asks for: the cluster's CPUs shared out, no more than the
    largest node has (so each one fits somewhere), at least 1. Ray sets the actor's OMP_NUM_THREADS (torch's
    threads) to it."""
    if not node_cpus or actors < 1:
        return 1
    return max(1, min(int(max(node_cpus)), int(sum(node_cpus)) // actors))


def run_ray(task: Task, items: list[dict], workers: int, address: str | None) -> Iterator[tuple[int, dict]]:
    """An actor pool of ``workers`` actors (at most one per GPU when the cluster has GPUs), each given the
    next item as it finishes one; an actor whose process dies is replaced."""
    import ray
    from ray.exceptions import RayActorError, RayError

    with _sigterm_interrupts() as restore_sigterm, _quiet("ray"), _ray_errors_not_printed():
        connected = not ray.is_initialized()  # a Python caller's own ray.init() is used and left alone
        if connected:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network connection of our own making
            options = {"log_to_driver": False, "logging_level": logging.ERROR}
            try:
                if address:
                    ray.init(address=address, **options)
                else:  # "local": never join a cluster found on this machine by accident
                    ray.init(address="local", num_cpus=max(workers, _cpus()), include_dashboard=False, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise SegUncertaintyError(f"cannot start or join {where}: {' '.join(str(exc).split())}") from None
            restore_sigterm()
        actors: list = []
        running: dict = {}  # ObjectRef -> (item index, actor running it)
        queue = deque(enumerate(items))
        try:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            count = min(workers, gpus or workers, len(items))
            node_cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
            runner = ray.remote(num_cpus=cpus_per_actor(node_cpus, count), num_gpus=1 if gpus else 0,
                                max_restarts=0, scheduling_strategy="SPREAD")(TaskRunner)

            def give(actor) -> None:
                if queue:
                    index, item = queue.popleft()
                    running[actor.run.remote(item)] = (index, actor)

            for _ in range(count):
                actors.append(runner.remote(task))
                give(actors[-1])
            while running:
                (ref,), _ = ray.wait(list(running), num_returns=1)
                index, actor = running.pop(ref)
                try:
                    result = ray.get(ref)
                except RayActorError as exc:  # its process died: a new actor takes its place
                    result = worker_failure(exc)
                    ray.kill(actor)
                    actors[actors.index(actor)] = actor = runner.remote(task)
                except RayError as exc:  # the task raised (it should not) or its result was lost
                    result = worker_failure(getattr(exc, "cause", None) or exc)
                give(actor)
                yield index, result
        finally:
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
            if connected:
                ray.shutdown()  # stops a local instance; only disconnects from a cluster at --address



# ------------------------------------------------------------------------------------------------ dask


def run_dask(task: Task, items: list[dict], workers: int, address: str | None) -> Iterator[tuple[int, dict]]:
    """One future per item on a LocalCluster of ``workers`` one-task-at-a-time processes (an item whose
    worker dies is retried once, then fails) or on the cluster at ``address`` (with its own
    ``distributed.scheduler.allowed-failures``, 3 by default)."""
    import dask
    from distributed import Client, LocalCluster, as_completed

    # distributed sets tornado.application to ERROR itself: name it, or an interrupted wait logs a traceback
    with _sigterm_interrupts(), _quiet("distributed", "tornado", "tornado.application"):
        cluster = client = None
        futures: dict = {}
        try:
            if address:
                try:
                    client = Client(address, timeout="10s")
                except (OSError, TimeoutError, ValueError) as exc:
                    raise SegUncertaintyError(f"cannot join the Dask cluster at {address}: "
                                              f"{' '.join(str(exc).split())}") from None
            else:
                # one task at a time per worker; a task whose worker died is retried once (that worker
                # may have died before it reported the task it had just finished) and then fails
                with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                                      "distributed.scheduler.worker-saturation": 1.0}):
                    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR,
                                           env=_threads_env(workers))  # Dask's own default: 1 thread
                client = Client(cluster)
            try:
                info = client.scheduler_info(n_workers=-1)["workers"].values()
            except TypeError:  # distributed before 2025: every worker without asking
                info = client.scheduler_info()["workers"].values()
            resources = {"GPU": 1} if any(w.get("resources", {}).get("GPU") for w in info) else None
            futures = {client.submit(task, item, pure=False, resources=resources): index
                       for index, item in enumerate(items)}
            for future in as_completed(list(futures)):
                index = futures.pop(future)
                try:
                    result = future.result()
                except Exception as exc:  # KilledWorker: its worker died; or the task raised
                    result = worker_failure(exc)
                future.release()
                yield index, result
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    if futures:
                        client.cancel(list(futures))
                client.close()
            if cluster is not None:
                cluster.close()


def run_tasks(task: Task, items: list[dict], executor: str = "local", workers: int = 1,
              address: str | None = None) -> Iterator[tuple[int, dict]]:
    """Run ``task`` over ``items`` on ``executor`` with ``workers`` workers (``address``: join a running
    Ray or Dask cluster instead of starting a local one); yields ``(index, result)`` as each finishes."""
    check_executor(executor, workers, address)
    if executor == "local":
        return run_local(task, items, workers)
    return (run_ray if executor == "ray" else run_dask)(task, items, workers, address)


def check_executor(executor: str, workers: int, address: str | None) -> None:
    """Refuse, before anything is written, what ``run_tasks`` cannot run: an unknown executor, fewer than
    one worker, --address with the local executor (UsageError), a missing ray / distributed package
    (UsageError naming the extra to install), or an --address where nothing answers (SegUncertaintyError)."""
    if executor not in EXECUTORS:
        raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers!r}")
    if executor == "local":
        if address:
            raise UsageError("--address applies to --executor ray or dask, not local")
        return
    _require("ray" if executor == "ray" else "distributed", executor)  # now, not at the first result
    if address and not _answers(address):  # Ray itself would retry for minutes, Dask for 10 s
        name = "Ray" if executor == "ray" else "Dask"
        raise SegUncertaintyError(f"cannot join the {name} cluster at {address}: nothing answers there")
