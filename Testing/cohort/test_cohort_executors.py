"""Cohort executors on real local clusters: Ray and Dask started inside the tests (2 workers each).

Each run checks that every item comes back exactly once with the same value as a plain loop in this
process, that each worker process loaded its "model" once, that a task killing its own process fails
only its item, and that nothing the run started is left running. Joining a cluster (--address) is run
against a Ray head from ``ray start --head`` and a Dask LocalCluster started here, which stay up.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import SimpleITK as sitk

from SegUncertaintyLib.cohort.executors import cpus_per_actor, local_gpu_env, run_tasks
from SegUncertaintyLib.core.errors import SegUncertaintyError, UsageError
from Testing.support.cohort_tasks import square_task

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]  # holds the Testing package

WORKERS = 2
ITEMS = [{"x": x, "sleep": 0.05} for x in range(8)]
KILLER = 3  # this item's task ends its own process


@pytest.fixture(autouse=True)
def workers_import_the_test_tasks(monkeypatch):
    """Ray and Dask worker processes import ``Testing.support.cohort_tasks`` through PYTHONPATH, as they would
    import SegUncertaintyLib from an environment installed on every node."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


def children() -> set[int]:
    """This process's live descendants, less multiprocessing's resource tracker (one per process, for
    its lifetime, whoever started it)."""
    pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline()):
                pids.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def wait_until_gone(pids: set[int], seconds: float = 15.0) -> set[int]:
    """The pids still alive (not zombies) after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        alive = set()
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.add(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def check_results(results: list[tuple[int, dict]], items: list[dict], killer: int | None) -> set[int]:
    """Every item exactly once, values equal to the reference, the killer's item failed, one load per
    worker process; returns the pids of the processes that ran items."""
    indices = [i for i, _ in results]
    assert sorted(indices) == list(range(len(items))), f"items missing or repeated: {indices}"
    by_index = dict(results)
    keep = [i for i in range(len(items)) if i != killer]
    # the reference: a plain loop in this process (the local executor with one worker yields in order)
    expected = [r["value"] for _, r in run_tasks(square_task, [dict(items[i], sleep=0) for i in keep], "local", 1)]
    assert {i: by_index[i].get("value") for i in keep} == dict(zip(keep, expected, strict=True))
    if killer is not None:
        failed = by_index[killer]
        assert failed["status"] == "failed" and failed["error"].startswith("worker failed:")
        assert "\n" not in failed["error"]
    done = [by_index[i] for i in keep]
    assert all(r["status"] == "done" for r in done)
    assert all(r["loads"] == 1 for r in done), "a worker process loaded its model more than once"
    assert os.getpid() not in {r["pid"] for r in done}, "items ran in the test process, not in workers"
    return {r["pid"] for r in done}


def test_gpu_assignment_gives_each_local_worker_one_gpu_round_robin():
    """The local executor's CUDA_VISIBLE_DEVICES per worker (untested on a GPU here: CPU machine)."""
    assert local_gpu_env(0, 0) == {} and local_gpu_env(5, 0, "0,1") == {}
    assert [local_gpu_env(w, 2)["CUDA_VISIBLE_DEVICES"] for w in range(5)] == ["0", "1", "0", "1", "0"]
    # the parent already restricted to GPUs 3 and 5: workers get those ids, not 0 and 1
    assert [local_gpu_env(w, 2, "3,5")["CUDA_VISIBLE_DEVICES"] for w in range(3)] == ["3", "5", "3"]
    assert local_gpu_env(1, 1, " 7 , 2")["CUDA_VISIBLE_DEVICES"] == "7"  # torch sees the first only


def test_ray_actors_share_the_cluster_cpus_within_the_largest_node():
    assert cpus_per_actor([2.0], 2) == 1 and cpus_per_actor([16.0], 2) == 8
    assert cpus_per_actor([16.0, 16.0, 8.0], 4) == 10  # 40 CPUs / 4, fits on a 16-CPU node
    assert cpus_per_actor([4.0, 4.0, 4.0, 4.0], 2) == 4  # 8 each would fit on no node
    assert cpus_per_actor([2.0], 8) == 1 and cpus_per_actor([], 2) == 1  # never 0: the pool still starts


def test_bad_executor_options_are_refused_with_one_message(monkeypatch):
    with pytest.raises(UsageError, match="--address applies to --executor ray or dask"):
        run_tasks(square_task, ITEMS, "local", 2, address="127.0.0.1:1")
    with pytest.raises(UsageError, match="--executor must be one of local, ray, dask"):
        run_tasks(square_task, ITEMS, "slurm", 2)
    with pytest.raises(UsageError, match="--workers must be at least 1"):
        run_tasks(square_task, ITEMS, "ray", 0)
    for executor, name in (("ray", "Ray"), ("dask", "Dask")):  # a port left closed: refused at once
        with pytest.raises(SegUncertaintyError, match=f"cannot join the {name} cluster at .*nothing answers"):
            run_tasks(square_task, ITEMS, executor, 2, address=f"tcp://127.0.0.1:{free_port()}")
    for module, extra in (("ray", "ray"), ("distributed", "dask")):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed: import raises ImportError
        with pytest.raises(UsageError, match=rf"pip install 'seguncertainty\[{extra}\]'"):
            run_tasks(square_task, ITEMS, extra, 2)


@pytest.mark.parametrize("executor", ["local", "ray", "dask"])
def test_local_cluster_runs_every_item_once_and_a_dead_worker_fails_only_its_item(executor):
    before = children()
    items = [dict(it, die=(i == KILLER)) for i, it in enumerate(ITEMS)]
    results = list(run_tasks(square_task, items, executor, WORKERS))
    pids = check_results(results, items, KILLER)
    assert len(pids) <= WORKERS + 1  # the workers, and the one that replaced the killed worker
    # each worker process gets its share of this machine's cores for torch's threads
    share = str(max(1, len(os.sched_getaffinity(0)) // WORKERS))
    if "OMP_NUM_THREADS" not in os.environ:
        assert {r["omp_threads"] for i, r in results if i != KILLER} == {share}
    assert not wait_until_gone(children() - before), f"{executor}: processes left running after the run"
    if executor == "ray":
        import ray

        assert not ray.is_initialized()


# ------------------------------------------------------------------------------- joining a cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head as a user would start one on a cluster's first node (token authentication on, as
    ``ray start`` does when a token exists), in its own temp dir so that no ``ray.init()`` of another
    process on this machine finds it. Stopped by SIGTERM to ``ray start --block``."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([ray_cli, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    port, temp_dir = free_port(), tempfile.mkdtemp(prefix="rayhead")
    log = open(Path(temp_dir) / "head.log", "wb")  # noqa: SIM115 (open for the fixture's lifetime)
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", f"--num-cpus={WORKERS}",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:  # as a batch script waits for its head node before starting the command
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
                time.sleep(0.5)
        yield head, f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(60)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_address_joins_a_running_cluster_and_leaves_it_running(ray_head, monkeypatch):
    head, address = ray_head
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the cluster uses token authentication
    for _ in range(2):  # a second run on the same cluster: the first one did not shut it down
        results, cluster_pids = [], set()
        for index, result in run_tasks(square_task, ITEMS, "ray", WORKERS, address):
            results.append((index, result))
            cluster_pids |= {p.pid for p in psutil.Process(head.pid).children(recursive=True)}
        pids = check_results(results, ITEMS, None)
        assert len(pids) <= WORKERS
        assert pids <= cluster_pids, "the tasks did not run in the cluster's worker processes"
        assert head.poll() is None, "the cluster's head stopped"


def test_dask_address_joins_a_running_cluster_and_leaves_it_running():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
        for _ in range(2):
            pids = check_results(list(run_tasks(square_task, ITEMS, "dask", WORKERS, cluster.scheduler_address)),
                                 ITEMS, None)
            assert pids <= worker_pids, "the tasks did not run on the cluster's workers"
            assert set(client.run(os.getpid).values()) == worker_pids, "the cluster's workers were stopped"


# ------------------------------------------------------------------------------------ interruption

INTERRUPTED_RUN = """
import json, sys, psutil
from SegUncertaintyLib.cohort.executors import run_tasks
from Testing.support.cohort_tasks import square_task
if __name__ == "__main__":
    try:
        for index, result in run_tasks(square_task, [{"x": x, "sleep": 0.5} for x in range(40)], sys.argv[1], 2):
            pids = [p.pid for p in psutil.Process().children(recursive=True)]
            print(json.dumps({"index": index, "children": pids}), flush=True)
    except KeyboardInterrupt:
        sys.exit(130)
"""


@pytest.mark.parametrize("executor", ["local", "dask", "ray"])
def test_sigterm_cancels_the_run_and_stops_the_local_cluster(executor, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(INTERRUPTED_RUN)
    run = subprocess.Popen([sys.executable, str(script), executor], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=os.environ)
    first = json.loads(run.stdout.readline())  # one item done: the cluster is up and working
    run.send_signal(signal.SIGTERM)
    assert run.wait(60) == 130
    assert first["children"], "the run started no worker processes"
    assert not wait_until_gone(set(first["children"])), f"{executor}: processes left after SIGTERM"
    assert run.stderr.read().count("Traceback") == 0


# ------------------------------------------------------------------------- the real cohort command

def _cohort_outputs(out: Path) -> tuple[list[dict], dict]:
    """worklist.csv's rows less the seconds column, and per case folder: the bytes of every image file
    (segmentation, maps, probabilities) and scores.json's values."""
    from SegUncertaintyLib.cohort.worklist import read_worklist

    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in read_worklist(out)]
    cases = {}
    for row in rows:
        folder = out / row["output"]
        images = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".nrrd", ".gz", ".nii")}
        cases[row["case"]] = {"images": images, "scores": json.loads((folder / "scores.json").read_text())}
    return rows, cases


def test_cohort_command_gives_identical_worklists_and_outputs_on_local_ray_and_dask(tmp_path):
    from SegUncertaintyLib import cli
    from Testing.support.phantoms import sphere_phantom
    from Testing.support.tiny_models import write_threshold_model

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, (radius, noise) in enumerate([(20.0, 0.0), (25.0, 0.05), (15.0, 0.1), (22.0, 0.02)]):
        sitk.WriteImage(sphere_phantom(size=(20, 18, 16), radius_mm=radius, noise=noise, seed=i),
                        str(inputs / f"case{i}.nii.gz"))
    model = write_threshold_model(tmp_path / "model")
    outputs = {}
    for executor in ("local", "ray", "dask"):
        out = tmp_path / f"out-{executor}"
        argv = ["cohort", str(inputs), "--out", str(out), "--model", str(model), "--method", "mc_dropout",
                "--samples", "4", "--progress", "none", "--executor", executor]
        argv += ["--workers", str(WORKERS)] if executor != "local" else []  # local: the default, in this process
        assert cli.main(argv) == 0
        outputs[executor] = _cohort_outputs(out)
    rows, cases = outputs["local"]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    for c in cases.values():
        assert {"segmentation.nrrd", "entropy.nrrd", "mutual_information.nrrd"} <= c["images"].keys()
        assert c["scores"]["classes"]["sphere"]
    for executor in ("ray", "dask"):
        assert outputs[executor][0] == rows, f"{executor}: worklist.csv differs from local mode's"
        for case, expected in cases.items():
            got = outputs[executor][1][case]
            assert got["images"].keys() == expected["images"].keys()
            for name, data in expected["images"].items():
                assert got["images"][name] == data, f"{executor}: {case}/{name} differs from local mode's"
            assert got["scores"] == expected["scores"], f"{executor}: {case}/scores.json differs"
