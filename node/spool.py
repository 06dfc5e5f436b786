"""The spool: the directory tree where received instances and results live on disk.

The spool is the source of truth. A file is written to a temporary name,
fsynced, renamed into place and its directory fsynced before anyone is told it
exists, so an acknowledged instance survives a crash or power loss. The index
(:mod:`node.index`) can be rebuilt from it.

Layout::

    <root>/incoming/          temporary files being written
    <root>/studies/<study>/<series>/<sop>.dcm
    <root>/results/<job id>/<sop>.dcm
    <root>/index.sqlite       the index
    <root>/broker.sqlite      the embedded Celery broker
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SAFE_UID = re.compile(r"^[0-9][0-9.]{0,63}$")


class SpoolError(Exception):
    """The spool could not store or find a file."""


class SpoolFullError(SpoolError):
    """Less disk space is free than the configured minimum."""


def uid_to_filename(uid: str) -> str:
    """A file-system-safe name for a UID; non-conformant UIDs are hashed, never trusted."""
    if _SAFE_UID.match(uid) and ".." not in uid:
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


@dataclass(frozen=True)
class SpoolPaths:
    root: Path

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def studies(self) -> Path:
        return self.root / "studies"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def index(self) -> Path:
        return self.root / "index.sqlite"


class Spool:
    """Durable file storage for received instances and pipeline results."""

    def __init__(self, root: Path, *, fsync: bool = True, min_free_bytes: int = 0) -> None:
        self.paths = SpoolPaths(Path(root).resolve())
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes
        for path in (self.paths.root, self.paths.incoming, self.paths.studies, self.paths.results):
            path.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()
        self._free_checked_at = float("-inf")
        self._free_at_check = 0
        self._written_since_check = 0

    @property
    def root(self) -> Path:
        return self.paths.root

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return (
            self.paths.studies
            / uid_to_filename(study_uid)
            / uid_to_filename(series_uid)
            / f"{uid_to_filename(sop_uid)}.dcm"
        )

    def study_dir(self, study_uid: str) -> Path:
        return self.paths.studies / uid_to_filename(study_uid)

    def result_dir(self, job_id: int) -> Path:
        return self.paths.results / str(job_id)

    def free_bytes(self) -> int:
        stat = os.statvfs(self.paths.root)
        return stat.f_bavail * stat.f_frsize

    def _free_bytes_cached(self) -> int:
        """Free bytes, re-read at most every 0.2 s and net of what was written since."""
        now = time.monotonic()
        if now - self._free_checked_at > 0.2:
            self._free_at_check = self.free_bytes()
            self._free_checked_at = now
            self._written_since_check = 0
        return self._free_at_check - self._written_since_check

    def write_durably(self, destination: Path, data: bytes) -> None:
        """Write *data* to *destination* so that it is on disk before this returns.

        Raises :class:`SpoolFullError` when the free-space floor would be crossed,
        or :class:`SpoolError` (with the operating system's reason) on any failure.
        A failure never leaves a partial file at *destination*.
        """
        if self._free_bytes_cached() - len(data) < self.min_free_bytes:
            raise SpoolFullError(
                f"spool {self.root} has less than the configured minimum of "
                f"{self.min_free_bytes // (1024 * 1024)} MiB free"
            )
        tmp = self.paths.incoming / f"{uuid.uuid4().hex}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self.fsync:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            parent = destination.parent
            new_dir = parent not in self._known_dirs and not parent.exists()
            if new_dir:
                parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, destination)
            if self.fsync:
                self._fsync_dir(parent)
                if new_dir:
                    # The new directory entries themselves must reach the disk too.
                    for ancestor in (parent.parent, parent.parent.parent):
                        self._fsync_dir(ancestor)
            self._known_dirs.add(parent)
            self._written_since_check += len(data)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot write {destination.name}: {exc.strerror or exc}") from exc

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def clean_incoming(self) -> int:
        """Remove temporary files left by a crash; returns how many were removed."""
        removed = 0
        for entry in os.scandir(self.paths.incoming):
            if entry.name.endswith(".tmp"):
                os.unlink(entry.path)
                removed += 1
        return removed

    def iter_instance_files(self) -> Iterator[Path]:
        """Every stored instance file, for rebuilding the index after a crash."""
        for study in os.scandir(self.paths.studies):
            if not study.is_dir():
                continue
            for series in os.scandir(study.path):
                if not series.is_dir():
                    continue
                for entry in os.scandir(series.path):
                    if entry.name.endswith(".dcm"):
                        yield Path(entry.path)

    def remove_study(self, study_uid: str) -> None:
        shutil.rmtree(self.study_dir(study_uid), ignore_errors=True)

    def remove_result(self, job_id: int) -> None:
        shutil.rmtree(self.result_dir(job_id), ignore_errors=True)
