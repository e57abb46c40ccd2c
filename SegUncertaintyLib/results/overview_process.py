"""The overview drawn by a child process that imports matplotlib while the command imports torch.

``seguncertainty segment`` mostly keeps one core busy: importing torch (about 1 s) and matplotlib (0.35 s,
used only for the overview) come one after the other. A child started at the command's outset imports
matplotlib on another core, draws the slices it is sent (:class:`.overview_slices.OverviewRequest`, pickled
over its stdin) while the parent writes the other files, and exits. An error it meets (the disk full,
matplotlib broken) comes back pickled over its stdout and is raised in the parent as if the parent had
drawn; a child that cannot be reached (it failed to start or died) leaves the drawing to the parent. Its
stderr is discarded: the command's errors are one line, never a child's traceback.
"""

from __future__ import annotations

import contextlib
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .overview_slices import OverviewRequest

POLL_S = 0.1  # how often the parent checks for a cancel while the child draws
# The child imports this package from where this process did: its folder goes first on the child's path
# unless it is there already (site-packages, which must stay behind the standard library)
CHILD = (f"import sys; p = {str(Path(__file__).resolve().parents[2])!r}; p in sys.path or sys.path.insert(0, p); "
         f"from {__name__} import main; sys.exit(main())")


class DrawHere:
    """Draws in this process (the library's way: a Slicer session or a cohort worker imports matplotlib
    once). The drawer protocol of write_outputs: ``start(request)``, then ``finish(check_cancel)`` once the
    run's other files are written, and ``close()`` on every way out (it ends a drawing still under way)."""

    def __init__(self) -> None:
        self.request: OverviewRequest | None = None

    def start(self, request: OverviewRequest) -> None:
        self.request = request

    def finish(self, check_cancel: Callable[[], None]) -> None:
        from .overview import draw_overview  # matplotlib only for runs that draw

        check_cancel()
        draw_overview(self.request)

    def close(self) -> None:
        self.request = None


class OverviewProcess(DrawHere):
    """The drawer in a child process, as a context manager: the child is started on entry (it imports
    matplotlib at once), draws from ``start`` on (beside the parent's writing) and is killed (if still
    alive) and reaped by ``close`` and on exit."""

    def __init__(self) -> None:
        super().__init__()
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> OverviewProcess:
        try:
            self.process = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError:
            self.process = None  # the parent draws
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def start(self, request: OverviewRequest) -> None:
        super().start(request)
        if self.process is not None:
            try:
                self.process.stdin.write(pickle.dumps(request))
                self.process.stdin.close()
            except OSError:  # the child is gone (it died before reading): the parent draws
                self._end_child()

    def finish(self, check_cancel: Callable[[], None]) -> None:
        if self.process is None:
            return super().finish(check_cancel)
        while self.process.poll() is None:
            check_cancel()  # a cancel leads to close(): the child must not write into a removed staging folder
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(POLL_S)
        reply, code = self.process.stdout.read(), self.process.returncode
        self._end_child()
        if code == 0:
            return None
        error = _unpickled(reply)
        if error is None:  # killed from outside, or no reply: the parent draws (meeting any error itself)
            return super().finish(check_cancel)
        raise error

    def close(self) -> None:
        self._end_child()
        super().close()

    def _end_child(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()  # reaps it
            for pipe in (self.process.stdin, self.process.stdout):
                pipe.close()
            self.process = None


def _unpickled(reply: bytes) -> BaseException | None:
    try:
        error = pickle.loads(reply)
    except Exception:  # noqa: BLE001 (a truncated or empty reply: there is no error to re-raise)
        return None
    return error if isinstance(error, BaseException) else None


def main() -> int:
    """The child: import the drawing, read one request from stdin, draw it; exit 0, or 1 with the error
    pickled on stdout."""
    try:
        from .overview import draw_overview  # the import this process exists to take off the parent

        draw_overview(pickle.load(sys.stdin.buffer))
    except Exception as exc:  # noqa: BLE001 (every error goes back to the parent, which raises it)
        try:
            reply = pickle.dumps(exc)
        except Exception:  # noqa: BLE001 (an unpicklable error: its type and text)
            reply = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
        sys.stdout.buffer.write(reply)
        sys.stdout.buffer.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
