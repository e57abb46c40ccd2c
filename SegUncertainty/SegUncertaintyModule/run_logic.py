"""The logic's background run: write the input, start the library's command line without blocking, follow its
progress, import its results, and cancel it (with its whole process tree)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import slicer
from SegUncertaintyMRML import volumes
from slicer.i18n import tr as _

from . import process
from .environment import library_dir, python_executable, slicerVersionProblem

STOP_TIMEOUT_S = 3.0  # how long a cancelled process tree gets to exit before it is killed


def stopProcessTree(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop a process and all its descendants (PythonSlicer is a launcher whose child, the interpreter,
    gets no signal from it): terminate the descendants, kill those still alive after ``timeout`` seconds,
    then terminate the process itself. The process, our child, is left for its reader to reap.
    psutil is imported here, not at module load: it is installed with the other packages at the first run."""
    import psutil

    try:
        parent = psutil.Process(pid)
        descendants = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for proc in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(descendants, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    with contextlib.suppress(psutil.NoSuchProcess):
        parent.terminate()


class RunLogic:
    """Mixed into SegUncertaintyLogic; keeps ``self.process`` (the running launcher, None when idle) and
    ``self._cancelRequested``; a finished run is imported with ``self.importRun`` (logic.py)."""

    def runState(self) -> str:
        """'idle', 'running', or 'cancelling' (from cancel() until the process has ended and onFinished ran)."""
        if self.process is None:
            return "idle"
        return "cancelling" if self._cancelRequested else "running"

    def isRunning(self) -> bool:
        """True from start() until the run's onFinished has been called, also while it is being cancelled."""
        return self.process is not None

    def start(self, inputVolume, model: str, method: str, samples: int, device: str,
              backend: str = process.DEFAULT_BACKEND, precision: str = "auto",
              onProgress=None, onLog=None, onFinished=None) -> None:
        """Write the input to a temporary folder and start the command line there, without blocking.
        ``backend`` and ``precision`` are the command line's; a whole-volume model runs on torch (backendFor).

        The callbacks run on the main thread (Slicer polls the process with a QTimer). onFinished(run, error)
        is called once: (RunNodes, None) on success, (None, message) otherwise, "Cancelled." after cancel().
        The scene changes only on success (new nodes).
        """
        problem = slicerVersionProblem()
        if problem:
            raise RuntimeError(problem)
        if self.isRunning():
            raise RuntimeError(_("A segmentation is already running."))
        modelArgument = self.modelChoice(model).argument
        backend, precision, _reason = self.backendFor(model, backend, precision)
        workdir = Path(tempfile.mkdtemp(prefix="SegUncertainty-", dir=slicer.app.temporaryPath))
        volumes.write_volume(inputVolume, workdir / "input.nrrd")
        args = process.segment_command(python_executable(), str(workdir / "input.nrrd"), str(workdir / "out"),
                                       model=modelArgument, method=method,
                                       samples=process.samples_option(method, samples), device=device,
                                       backend=backend, precision=precision)
        log: list[str] = []

        def onLine(line: str) -> None:
            # Slicer's poll stops for good when a callback raises (util.py, _startAsyncProcessHandling): the run
            # would never finish. A failing display is logged, and the run goes on.
            try:
                progress = process.parse_line(line)
                if progress is None:
                    log.append(line)
                    if onLog:
                        onLog(line)
                elif onProgress and not self._cancelRequested:
                    onProgress(progress)
            except Exception:
                logging.exception("SegUncertainty: showing a line of the segmentation process failed: %r", line)

        def onCompleted(returnCode: int) -> None:
            run, error = None, None
            try:
                if self._cancelRequested:
                    error = process.CANCELLED_MESSAGE
                elif returnCode != 0:
                    error = process.error_message(log, returnCode)
                else:
                    run = self.importRun(workdir / "out", inputVolume)
            except Exception as exc:  # reported to the user; the scene is left as it was
                error = str(exc)
            finally:
                self.process, self._cancelRequested = None, False
                shutil.rmtree(workdir, ignore_errors=True)
            if onFinished:
                onFinished(run, error)

        env = {"PYTHONPATH": os.pathsep.join(filter(None, [library_dir(), os.environ.get("PYTHONPATH")]))}
        self._cancelRequested = False
        self.process = slicer.util.launchConsoleProcess(args, updateEnvironment=env, blocking=False,
                                                        logCallback=onLine, completedCallback=onCompleted)

    def cancel(self) -> None:
        """Stop a running segmentation and its whole process tree; onFinished then reports "Cancelled."
        and the scene stays as it was. Nothing happens when no run is under way or one is being cancelled."""
        if getattr(self, "process", None) is None or self._cancelRequested:
            return
        self._cancelRequested = True
        stopProcessTree(self.process.pid)
