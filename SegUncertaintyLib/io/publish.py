"""Publish a run folder in one atomic step, never over a file this tool did not write.

Layout next to the output folder ``<parent>/<name>`` (same parent, so one file system):

- ``.seguncertainty-lock-<tag>``: a lock file (``flock``) held for the whole run; a second run into the
  same folder is refused. The kernel releases it when a process dies, however it dies.
- ``.seguncertainty-stage-<tag>-<pid>-<random>``: the new run, written in full, then swapped in by a
  directory rename (``renameat2(RENAME_EXCHANGE)`` where the system has it, else two renames with the
  old run put back if the second fails). The old run is deleted only after the swap succeeded.
- ``.seguncertainty-old-<tag>-<pid>-<random>``: the previous run during a two-rename swap.
- ``.seguncertainty-scratch-<tag>-<pid>-<random>``: large intermediate data of the run (:meth:`scratch`),
  on the output's file system rather than a temporary folder that may be small or in RAM.

``<tag>`` is the folder name (cut to 40 characters) and a hash of it. Staging, scratch and old folders are
only ever removed by a run that holds the lock for that folder: their owner is then gone. A folder left in
the middle of a two-rename swap (killed between the renames) is put back.

An existing output folder is replaced only if it is empty or every entry in it was written by an earlier
run of this tool (as its ``listing`` function says); anything else is refused with
:class:`OutputError` (exit 5) and nothing is touched. Files of the earlier run that the new run does not
write are gone after the swap, so no stale map is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from ..core.errors import CancelledError, OutputError
from ..core.manifest import run_files

try:
    import fcntl
except ImportError:  # Windows: no advisory lock (documented)
    fcntl = None

PREFIX = ".seguncertainty-"
Listing = Callable[[Path], "set[str] | None"]


def listed_files(folder: Path, manifest: str) -> set[str] | None:
    """The file names an earlier run of this tool wrote in ``folder``: the ``outputs[].file`` entries of
    ``folder/manifest`` and the manifest itself; None unless that manifest is readable JSON whose ``tool``
    starts with "seguncertainty " and whose entries are plain file names (no folder part)."""
    try:
        data = json.loads((folder / manifest).read_text(encoding="utf-8"))
        if not str(data.get("tool", "")).startswith("seguncertainty "):
            return None
        names = {entry["file"] for entry in data["outputs"]}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if not all(isinstance(n, str) and n and "/" not in n and "\\" not in n and n not in (".", "..")
               for n in names):
        return None
    return names | {manifest}


def folder_tag(name: str) -> str:
    """A short, file-name-safe tag for an output folder name (bounded length, distinct per name)."""
    return f"{name[:40]}-{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:10]}"


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while folders are renamed (handlers run right after)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class OutputFolder:
    """The output folder of one run: lock, checks, staging and the atomic swap.

    Use as a context manager (takes the lock, removes leftovers of killed runs, checks the folder may be
    replaced), then write into :meth:`staged` and leave its block normally to publish.
    """

    def __init__(self, path: str | os.PathLike, listing: Listing):
        self.requested = Path(path)
        self.listing = listing
        self.path = Path(os.path.abspath(self.requested))
        self._lock_fd: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> OutputFolder:
        path = self.path
        if path.is_symlink() and path.resolve().is_dir():
            path = self.path = path.resolve()
        if path.name in ("", ".", ".."):
            raise OutputError(f"Cannot use {self.requested} as output folder; name a sub-folder")
        if path.exists() and not path.is_dir():
            raise OutputError(f"Output folder {self.requested} is an existing file; name a folder")
        if path.is_dir() and os.path.ismount(path):  # a mount point cannot be swapped by a rename
            raise OutputError(f"Output folder {self.requested} is a mount point, which cannot be replaced; "
                              "name a sub-folder")
        self.parent = path.parent
        try:
            self.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"Cannot write to output folder {self.requested}: {exc.strerror or exc}") from exc
        self.tag = folder_tag(path.name)
        self._lock()
        try:
            self._clean_leftovers()
            self.check_replaceable()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._unlock()

    # -- lock ----------------------------------------------------------------------------------
    def _lock(self) -> None:
        lock = self.parent / f"{PREFIX}lock-{self.tag}"
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"Cannot write to output folder {self.requested}: "
                                  f"{exc.strerror or exc} ({self.parent})") from exc
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise OutputError(f"Another seguncertainty run (pid {owner}) is writing to {self.requested}; "
                                  "wait for it to finish or choose another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file unlinked by a run that just finished
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd, self._lock_path = fd, lock

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                self._lock_path.unlink()
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- checks --------------------------------------------------------------------------------
    def _leftovers(self, kind: str) -> list[Path]:
        start = f"{PREFIX}{kind}-{self.tag}-"
        try:
            return sorted((p for p in self.parent.iterdir() if p.name.startswith(start) and p.is_dir()
                           and not p.is_symlink()), key=lambda p: p.stat().st_mtime)
        except OSError:
            return []

    def _clean_leftovers(self) -> None:
        """With the lock held: put back a run lost between two renames, remove killed runs' folders."""
        old = self._leftovers("old")
        if old and not self.path.exists():
            os.rename(old.pop(), self.path)
        for folder in old + self._leftovers("stage") + self._leftovers("scratch"):
            shutil.rmtree(folder, ignore_errors=True)

    def check_replaceable(self) -> None:
        """Raise OutputError unless the folder is absent, empty, or holds only an earlier run's files."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise OutputError(f"Output folder {self.requested} is an existing file; name a folder")
        try:
            entries = {p.name for p in self.path.iterdir()}
        except OSError as exc:
            raise OutputError(f"Cannot read output folder {self.requested}: {exc.strerror or exc}") from exc
        if not entries:
            return
        earlier = self.listing(self.path)
        foreign = sorted(entries - (earlier or set()))
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            what = "files of an earlier run and others" if earlier else "files this tool did not write"
            raise OutputError(f"Output folder {self.requested} holds {what} ({shown}); nothing was changed. "
                              "Choose a new or empty folder")

    # -- staging and publishing ----------------------------------------------------------------
    @contextlib.contextmanager
    def staged(self, cancelled: Callable[[], bool] | None = None) -> Iterator[Path]:
        """A new folder to write the run into; published when the block ends normally, else removed."""
        if self._lock_fd is None and fcntl is not None:
            raise RuntimeError("OutputFolder.staged() outside its 'with' block")
        stage = self._new_folder("stage")
        try:
            yield stage
            self.check_replaceable()  # the folder may have changed during a long run
            if cancelled is not None and cancelled():
                raise CancelledError()
            self._swap(stage)
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A folder beside the output for the run's large intermediate data, removed when the block ends."""
        if self._lock_fd is None and fcntl is not None:
            raise RuntimeError("OutputFolder.scratch() outside its 'with' block")
        folder = self._new_folder("scratch")
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _new_folder(self, kind: str) -> Path:
        folder = self.parent / f"{PREFIX}{kind}-{self.tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            folder.mkdir()
        except OSError as exc:
            raise OutputError(f"Cannot write next to output folder {self.requested}: "
                              f"{exc.strerror or exc}") from exc
        return folder

    def _swap(self, stage: Path) -> None:
        try:
            with _signals_deferred():
                if not self.path.exists():
                    os.rename(stage, self.path)
                    return
                if not _exchange(stage, self.path):
                    old = self.parent / f"{PREFIX}old-{self.tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                    os.rename(self.path, old)
                    try:
                        os.rename(stage, self.path)
                    except BaseException:
                        os.rename(old, self.path)
                        raise
                    stage = old
        except OSError as exc:
            raise OutputError(f"Cannot publish the run into {self.requested}: {exc.strerror or exc}; "
                              "the previous content was kept") from exc
        shutil.rmtree(stage, ignore_errors=True)  # the previous run, now replaced


def output_folder(out_dir: str | os.PathLike) -> OutputFolder:
    """The locked, checked output folder of a segmentation run (use as a context manager). Light: the
    command line takes it before anything heavy is imported."""
    return OutputFolder(out_dir, run_files)
