"""Rank 0's progress lines, logged by the driver while the ranks train elsewhere.

A rank of the ``torch`` or ``horovod`` backend is a process that Spark started on an executor, often on
another machine, and its log reaches nobody. So rank 0 writes each progress line as one small file in a
folder on the run's own storage (the checkpoints' filesystem: on a cluster the one place that the driver
and the executors share), and a driver thread polls that folder and logs the lines in order. One file
per line because object stores cannot append; each file appears whole (a local file is renamed into
place, an S3 object exists only once written), so the driver never reads half a line.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from types import TracebackType

import pyarrow.fs as pafs

from ipinsights.storage.filesystems import ArrowStore, arrow_fs

log = logging.getLogger(__name__)

#: How often the driver looks for new lines: a line is logged at most this long after rank 0 wrote it.
POLL_SECONDS = 2.0


class ProgressWriter:
    """Rank 0's side: :meth:`write` puts one line into ``folder`` (a path or URI) as its own file.

    Progress is not worth a failed run: a write that fails is logged once and later lines are dropped.
    """

    def __init__(self, folder: str) -> None:
        self._fs, self._path = arrow_fs(folder)
        # File names sort in writing order; a retried task's writer sorts after the one it replaces.
        self._prefix = f"{time.time_ns():020d}"
        self._seq = 0
        self._broken = False

    def write(self, line: str) -> None:
        if self._broken:
            return
        self._seq += 1
        name = f"{self._prefix}-{self._seq:08d}.txt"
        try:
            if self._fs.type_name == "local":
                self._fs.create_dir(self._path, recursive=True)
                tmp = f"{self._path}/.{name}"  # hidden: the driver skips it until it is renamed
                with self._fs.open_output_stream(tmp) as fh:
                    fh.write(line.encode())
                self._fs.move(tmp, f"{self._path}/{name}")
            else:
                with self._fs.open_output_stream(f"{self._path}/{name}") as fh:
                    fh.write(line.encode())
        except OSError as exc:
            self._broken = True
            log.warning("progress lines cannot be written to %s (%s); training goes on without them", self._path, exc)


class ProgressTail:
    """The driver's side: a context that logs every line written into a fresh folder under ``parent``.

    ``folder`` is the one to hand to :class:`ProgressWriter`. On exit the thread stops, the lines it has
    not logged yet are logged, and the folder is removed.
    """

    def __init__(self, parent: str, poll_seconds: float = POLL_SECONDS) -> None:
        self.folder = f"{parent.rstrip('/')}/progress-{uuid.uuid4().hex[:12]}"
        self._fs, self._path = arrow_fs(self.folder)
        self._poll = poll_seconds
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ipinsights-progress", daemon=True)
        self._warned = False

    def __enter__(self) -> ProgressTail:
        self._fs.create_dir(self._path, recursive=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()  # what rank 0 wrote since the last poll
        try:
            ArrowStore().delete(self.folder)
        except OSError as err:
            log.warning("could not remove the progress folder %s: %s", self.folder, err)

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            self._drain()

    def _drain(self) -> None:
        try:
            infos = self._fs.get_file_info(pafs.FileSelector(self._path, allow_not_found=True))
            names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
            for name in names:
                if name.startswith(".") or name in self._seen:
                    continue
                with self._fs.open_input_stream(f"{self._path}/{name}") as fh:
                    text = fh.read().decode("utf-8", "replace")
                self._seen.add(name)
                log.info("rank 0: %s", text)
        except OSError as exc:  # a storage hiccup: try again at the next poll
            if not self._warned:
                self._warned = True
                log.warning("cannot read progress lines from %s: %s", self.folder, exc)
