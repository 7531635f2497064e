"""Image files dropped into a directory, each processed once: the backlog in name order at
start, then new files as they are completed. A file is journaled under the state directory
once its results are durable in the outbox, so a restart takes again only what had no
stored result yet (at least once, never lost). Files that do not decode, links that lead
nowhere, and images larger than max_pixels (judged from the header, before decoding) are
moved aside. A JPEG is decoded at reduced scale when the models reading the folder take a
small enough input."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import json
import logging
import os
import shutil
import stat
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.sources.base import Frame, Source, SourceConfig, SourceError
from edge_agent.sources.jpeg import DecodeScale, decode, decode_full, is_jpeg
from edge_agent.watch import DirectoryWatcher

log = logging.getLogger(__name__)

_WAIT_S = 1.0  # how often an idle read looks at young files and at the directory itself
_MEGA = 1_000_000
# What imagesize reads; cv2 also decodes PAM, Radiance HDR, Sun raster and PFM, whose size
# it cannot tell: those are set aside undecoded rather than decoded blind.
_SIZED_FORMATS = "PNG, JPEG, BMP, GIF, WebP, TIFF, JPEG 2000, AVIF/HEIF, PBM/PGM/PPM"


class ImageDirConfig(SourceConfig):
    kind: Literal["image_dir"] = Field("image_dir", description="Images dropped in a folder.")
    path: Annotated[Path, LOCAL_ONLY] = Field(
        description="The directory to watch (not its subdirectories)."
    )
    patterns: list[str] = Field(
        ["*.jpg", "*.jpeg", "*.png", "*.bmp"],
        min_length=1,
        description="File name patterns to take, any case; names starting with . are skipped.",
    )
    rejected_dir: Annotated[Path | None, LOCAL_ONLY] = Field(
        None,
        description="Where undecodable, oversized and broken-link files are moved; "
        "empty: <path>/.rejected.",
    )
    max_pixels: int = Field(
        50_000_000,
        gt=0,
        description="Largest image taken, width x height, read from the file's header before "
        "decoding: a larger one is set aside undecoded, so a small compressed file cannot "
        "blow up to gigabytes. The default is above the largest camera frame (a 48 MP "
        f"sensor is 8000 x 6000). Formats whose header gives no size ({_SIZED_FORMATS} do) "
        "are set aside too.",
    )
    settle_s: float = Field(
        1.0,
        ge=0,
        description="Files found at start that changed less than this long ago may still be "
        "written: they wait until they are this old.",
    )
    scan_interval_s: float = Field(
        1.0, gt=0, description="Where inotify is missing: how often the directory is scanned."
    )
    decode_scale: DecodeScale = "auto"


class ImageDirSource(Source):
    recorded = True  # files wait on disk: none should go without a result

    def __init__(self, name: str, config: ImageDirConfig, state_dir: Path) -> None:
        super().__init__(name, config, state_dir)
        self.cfg = config
        self.journal_path = state_dir / f"image_dir-{name}.processed"
        self.rejected_dir = config.rejected_dir or config.path / ".rejected"
        self._interrupted = threading.Event()
        self._watcher: DirectoryWatcher | None = None
        self._journal: IO[str] | None = None
        self._journal_lines = 0
        self._processed: set[str] = set()  # taken in this run, or journaled before
        self._journaled: set[str] = set()  # results durable: these survive a restart
        self._journal_lock = threading.Lock()  # confirmations come from the outbox writer
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._young: set[str] = set()  # backlog files that may still be being written
        self._index = 0

    def open(self) -> None:
        directory = self.cfg.path
        if not directory.is_dir():
            raise SourceError(f"{directory}: no such directory")
        # Watch before listing, so a file arriving in between is not missed.
        self._watcher = DirectoryWatcher(directory, fallback_interval=self.cfg.scan_interval_s)
        try:
            # Every link is kept, to be set aside with a reason if its target is missing or
            # loops; asked first, since is_file() on a loop raises ELOOP.
            names = {
                entry.name
                for entry in os.scandir(directory)
                if entry.is_symlink() or entry.is_file()
            }
            self._load_journal(names)
        except OSError as err:
            self.close()
            raise SourceError(f"{directory}: {err.strerror or err}") from err
        self._queue.clear()
        self._queued.clear()
        self._young.clear()
        now = time.time()
        for name in sorted(names):
            if self._wanted(name):
                path = directory / name
                try:
                    young = now - path.stat().st_mtime < self.cfg.settle_s
                except FileNotFoundError:
                    if not path.is_symlink():
                        continue  # gone since the listing
                    young = False  # a link to nothing: _take sets it aside
                except OSError:
                    young = False  # a link loop, say: _take sets it aside
                if young:
                    self._young.add(name)
                else:
                    self._enqueue(name)
        log.info(
            "source %s: %s, %d waiting, %d taken before",
            self.name,
            directory,
            len(self._queue) + len(self._young),
            len(self._processed),
        )

    def read(self) -> Frame | None:
        while True:
            if self._interrupted.is_set() or self._watcher is None:
                raise SourceError("interrupted")
            if self._queue:
                name = self._queue.popleft()
                self._queued.discard(name)
                frame = self._take(name)
                if frame is not None:
                    return frame
                continue
            changes = self._watcher.wait_changes(_WAIT_S if self._young else 5 * _WAIT_S)
            if self._interrupted.is_set():
                raise SourceError("interrupted")
            for name in changes.removed:
                self._young.discard(name)
                self._processed.discard(name)  # a new file of that name is new
                with self._journal_lock:
                    self._journaled.discard(name)
            for name in sorted(changes.settled | self._linked(changes.names - changes.settled)):
                self._young.discard(name)
                self._enqueue(name)
            self._ripen()
            if not changes and not self.cfg.path.is_dir():
                raise SourceError(f"{self.cfg.path}: the directory is gone")
            if self._journal_lines > 2 * len(self._journaled) + 1024:
                try:
                    with self._journal_lock:
                        self._compact(set(self._journaled))
                except OSError as err:
                    raise SourceError(f"{self.journal_path}: {err.strerror or err}") from err

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        with self._journal_lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None
        self._interrupted.clear()

    def interrupt(self) -> None:
        self._interrupted.set()
        watcher = self._watcher
        if watcher is not None:
            watcher.close()  # wakes a read() waiting on it

    def _wanted(self, name: str) -> bool:
        if name.startswith("."):
            return False
        lower = name.lower()
        return any(fnmatch.fnmatchcase(lower, p.lower()) for p in self.cfg.patterns)

    def _enqueue(self, name: str) -> None:
        if self._wanted(name) and name not in self._processed and name not in self._queued:
            self._queue.append(name)
            self._queued.add(name)

    def _linked(self, names: set[str]) -> set[str]:
        """Names that appeared as links, which no write will close: complete already."""
        linked = set()
        for name in names:
            if self._wanted(name) and name not in self._processed:
                try:
                    st = (self.cfg.path / name).lstat()
                except FileNotFoundError:
                    continue
                if stat.S_ISLNK(st.st_mode) or st.st_nlink > 1:
                    linked.add(name)
        return linked

    def _ripen(self) -> None:
        now = time.time()
        for name in sorted(self._young):
            try:
                mtime = (self.cfg.path / name).stat().st_mtime
            except FileNotFoundError:
                self._young.discard(name)
                continue
            if now - mtime >= self.cfg.settle_s:
                self._young.discard(name)
                self._enqueue(name)

    def _take(self, name: str) -> Frame | None:
        # Here, not at the top: imagesize brings urllib and xml (about 8 MB), which an agent
        # without an image folder never needs.
        import imagesize

        path = self.cfg.path / name
        try:
            # One open file for the header check and the read: what is checked is what is
            # decoded, and an oversized file is never read whole.
            with path.open("rb") as file:
                width, height = imagesize.get(file, exif_rotation=False)
                if width <= 0 or height <= 0:
                    self._reject(
                        name,
                        f"has no image size in its header ({_SIZED_FORMATS} have), "
                        "so it is not decoded",
                    )
                    return None
                if width * height > self.cfg.max_pixels:
                    self._reject(
                        name,
                        f"is {width}x{height} pixels ({width * height / _MEGA:.1f} MP), over "
                        f"max_pixels ({self.cfg.max_pixels / _MEGA:.1f} MP)",
                    )
                    return None
                file.seek(0)
                data = np.frombuffer(file.read(), dtype=np.uint8)
        except FileNotFoundError:
            if path.is_symlink():
                self._reject(name, "is a symbolic link to a missing file")
            return None  # else gone before its turn
        except OSError as err:
            if err.errno == errno.ELOOP:
                self._reject(name, "is a symbolic link loop")
            else:
                self._reject(name, f"cannot be read ({err.strerror})")
            return None
        frame = self._decode(data)
        if frame is None:
            self._reject(name, "does not decode as an image")
            return None
        self._processed.add(name)  # not taken again in this run
        frame.meta["file"] = str(path)
        frame.on_durable = functools.partial(self._confirm, name)
        self._index += 1
        return frame

    def _decode(self, data: npt.NDArray[np.uint8]) -> Frame | None:
        """The file's image, reduced when it is a JPEG bigger than the models want; None
        when it does not decode."""
        full: tuple[int, int] | None = None
        if self.cfg.decode_scale == "auto" and is_jpeg(data):
            decoded = decode(data, self.wanted_size)
            image = decoded.image if decoded is not None else None
            full = decoded.full_size if decoded is not None else None
        else:
            image = decode_full(data)
        if image is None:
            return None
        jpeg = data if full is not None else None  # kept for a whole-frame snapshot
        now = time.monotonic(), time.time()
        return Frame(image, *now, self._index, full_size=full, jpeg=jpeg)

    def _reject(self, name: str, why: str) -> None:
        self.count("rejected_files")
        target = self.rejected_dir / name
        try:
            self.rejected_dir.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(target):  # a link there, even a broken one, is not replaced
                target = target.with_name(f"{target.stem}.{time.time_ns()}{target.suffix}")
            shutil.move(self.cfg.path / name, target)
        except OSError as err:
            log.warning(
                "source %s: %s %s; could not move it aside (%s), skipping it",
                self.name,
                self.cfg.path / name,
                why,
                err,
            )
            self._processed.add(name)
            self._confirm(name)  # so it is not tried again
            return
        log.warning("source %s: %s %s; moved to %s", self.name, self.cfg.path / name, why, target)

    # -- the journal of names taken --------------------------------------------------------

    def _load_journal(self, present: set[str]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        names: set[str] = set()
        lines = 0
        torn = False
        try:
            text = self.journal_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            lines += 1
            try:
                name = json.loads(line)
            except ValueError:
                torn = True  # a crash mid-write
                continue
            if isinstance(name, str):
                names.add(name)
        torn = torn or (bool(text) and not text.endswith("\n"))
        self._processed = names & present
        self._journaled = set(self._processed)
        if torn or len(self._processed) < lines:
            self._compact(self._processed)
        else:
            self._journal_lines = lines
            self._journal = self.journal_path.open("a", encoding="utf-8")

    def _confirm(self, name: str) -> None:
        """The file's results are durable (or it was set aside): journal it. Called from
        the outbox writer's thread."""
        with self._journal_lock:
            if name in self._journaled:
                return
            try:
                # After close() (results committed while the agent stops) it opens again.
                journal = self._journal or self.journal_path.open("a", encoding="utf-8")
                journal.write(json.dumps(name) + "\n")
                journal.flush()
                os.fsync(journal.fileno())
                if journal is not self._journal:
                    journal.close()
            except OSError as err:
                # Not journaled: the file is taken again after a restart, never lost.
                log.error("source %s: %s: %s", self.name, self.journal_path, err)
                return
            self._journaled.add(name)
            self._journal_lines += 1

    def _compact(self, names: set[str]) -> None:
        """Rewrite the journal with `names` only: write aside, fsync, rename over."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        tmp = self.journal_path.with_name(self.journal_path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            out.writelines(json.dumps(name) + "\n" for name in sorted(names))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.journal_path)
        with contextlib.suppress(OSError):  # not every file system lets a directory be synced
            fd = os.open(self.journal_path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._journal_lines = len(names)
        self._journal = self.journal_path.open("a", encoding="utf-8")
