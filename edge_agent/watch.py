"""Waiting for files in one directory to change: Linux inotify through ctypes, or a periodic
scan where inotify is missing. Used by the image directory source and the config reloader
(editors often replace a file by rename, so the directory is watched, not the file)."""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import select
import struct
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

# <sys/inotify.h>
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = 0o2000000

_MASK = (
    IN_CLOSE_WRITE
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_ATTRIB
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class Waker:
    """A flag another thread can set, with a file descriptor that becomes readable when it
    is set, so a thread blocked in select() on its own descriptors wakes up too."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._set = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        # The pipe is closed by close(), or when the Waker is collected; not at interpreter
        # exit, where a daemon thread may still be in select() on it (EBADF there).
        self._finalizer = weakref.finalize(self, _close_fds, self._r, self._w)
        self._finalizer.atexit = False

    def fileno(self) -> int:
        return self._r

    def set(self) -> None:
        with self._lock:
            if self._closed or self._set.is_set():
                return
            self._set.set()
            os.write(self._w, b"x")

    def clear(self) -> None:
        with self._lock:
            self._set.clear()
            if not self._closed:
                _drain(self._r)

    def is_set(self) -> bool:
        return self._set.is_set()

    def wait(self, timeout: float | None) -> bool:
        """Sleep until set or timeout; True when set."""
        return self._set.wait(timeout)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._finalizer()


def _close_fds(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


def _drain(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Changes:
    """What one wait() saw. `settled` names are complete: written and closed or moved in
    (inotify), or unchanged for one scan interval after a change (scan)."""

    names: set[str] = field(default_factory=set)  # every name with any event
    settled: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)  # deleted or moved out

    def __bool__(self) -> bool:
        return bool(self.names)


_Stat = tuple[int, int, int]  # mtime_ns, size, inode


class _Inotify:
    def __init__(self) -> None:
        libc = _libc()
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int
        init1 = libc.inotify_init1
        init1.argtypes = [ctypes.c_int]
        init1.restype = ctypes.c_int
        fd = init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise _os_error("inotify_init1")
        self.fd: int = fd

    def add_watch(self, directory: Path) -> int:
        wd: int = self._add(self.fd, os.fsencode(directory), _MASK)
        if wd < 0:
            raise _os_error(f"inotify_add_watch {directory}")
        return wd

    def close(self) -> None:
        os.close(self.fd)


@functools.cache
def _libc() -> ctypes.CDLL:
    # The process's own symbols include libc's (glibc or musl), with no library search.
    return ctypes.CDLL(None, use_errno=True)


def _os_error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


class DirectoryWatcher:
    """wait() returns the names in `directory` that were created, written, moved in or out,
    deleted or had their attributes changed since the last call. If the directory itself
    goes away, the watcher polls for it and, once it is back, reports every name in it."""

    def __init__(
        self, directory: Path, fallback_interval: float = 1.0, use_inotify: bool = True
    ) -> None:
        self.directory = Path(directory)
        self.fallback_interval = fallback_interval
        self._waker = Waker()
        self._lock = threading.Lock()
        self._closed = False
        self._released = False
        self._waiters = 0
        self._inotify: _Inotify | None = None
        self._wd: int | None = None
        # Scan mode: the last snapshot, names that changed in the last scan (not settled
        # yet), and when to scan next.
        self._snapshot: dict[str, _Stat] = {}
        self._unsettled: set[str] = set()
        self._next_scan = 0.0
        if use_inotify:
            try:
                self._inotify = _Inotify()
            except (OSError, AttributeError) as err:  # AttributeError: no such symbol
                log.info("inotify unavailable (%s); scanning %s instead", err, directory)
        if self._inotify is not None:
            try:
                self._try_add_watch()
            except OSError as err:  # e.g. ENOSPC: the user's inotify watch limit is reached
                log.info("cannot watch %s with inotify (%s); scanning it instead", directory, err)
                self._inotify.close()
                self._inotify = None
        if self._inotify is None:
            self._snapshot = self._scan()
            self._next_scan = time.monotonic() + fallback_interval

    @property
    def using_inotify(self) -> bool:
        return self._inotify is not None

    @property
    def closed(self) -> bool:
        return self._closed

    def wait(self, timeout: float | None) -> set[str]:
        """Names that changed; an empty set on timeout or once closed."""
        return self.wait_changes(timeout).names

    def wait_changes(self, timeout: float | None) -> Changes:
        """Like wait(), telling apart names that are complete and names that are gone."""
        with self._lock:
            if self._closed:
                return Changes()
            self._waiters += 1
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            if self._inotify is not None:
                return self._wait_inotify(self._inotify, deadline)
            return self._wait_scan(deadline)
        finally:
            with self._lock:
                self._waiters -= 1
                if self._closed and self._waiters == 0:
                    self._release()

    def close(self) -> None:
        """Safe from any thread: a wait() in progress returns an empty set at once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._waker.set()
            if self._waiters == 0:
                self._release()

    def __enter__(self) -> DirectoryWatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- inotify ---------------------------------------------------------------------------

    def _try_add_watch(self, strict: bool = True) -> bool:
        """Watch the directory; False while it does not exist. Other failures raise, or
        with strict=False count as not there yet."""
        assert self._inotify is not None
        try:
            self._wd = self._inotify.add_watch(self.directory)
        except OSError as err:
            if strict and err.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
            self._wd = None
        return self._wd is not None

    def _wait_inotify(self, inotify: _Inotify, deadline: float | None) -> Changes:
        while True:
            if self._wd is None:
                # The directory is gone: poll for it, and report all it holds once back.
                if self._try_add_watch(strict=False):
                    names = set(self._scan())
                    if names:
                        return Changes(names=names, settled=set(names))
                    continue
                step = _remaining(deadline, self.fallback_interval)
                if step <= 0 or self._waker.wait(step):
                    return Changes()
                continue
            ready, _, _ = select.select([inotify.fd, self._waker.fileno()], [], [], _left(deadline))
            if self._waker.is_set():
                return Changes()
            if not ready:
                return Changes()
            changes = self._read_events(inotify)
            if changes:
                return changes
            if deadline is not None and time.monotonic() >= deadline:
                return Changes()

    def _read_events(self, inotify: _Inotify) -> Changes:
        data = _drain(inotify.fd)
        changes = Changes()
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            name = os.fsdecode(data[offset : offset + length].rstrip(b"\0"))
            offset += length
            if mask & IN_Q_OVERFLOW:
                # Events were lost: report everything there is.
                log.warning("inotify queue overflowed on %s; rescanning", self.directory)
                everything = set(self._scan())
                changes.names |= everything
                changes.settled |= everything
                continue
            if wd != self._wd:
                continue
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                self._wd = None  # the kernel dropped the watch, or will
                continue
            if not name:
                continue
            changes.names.add(name)
            if mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
                changes.settled.add(name)
                changes.removed.discard(name)
            if mask & (IN_DELETE | IN_MOVED_FROM):
                changes.removed.add(name)
                changes.settled.discard(name)
        return changes

    # -- scan ------------------------------------------------------------------------------

    def _scan(self) -> dict[str, _Stat]:
        snapshot: dict[str, _Stat] = {}
        try:
            entries = os.scandir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return snapshot
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                snapshot[entry.name] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return snapshot

    def _wait_scan(self, deadline: float | None) -> Changes:
        while True:
            delay = self._next_scan - time.monotonic()
            if delay > 0:
                step = _remaining(deadline, delay)
                if self._waker.wait(step):
                    return Changes()
                if step < delay:  # the deadline came first
                    return Changes()
            self._next_scan = time.monotonic() + self.fallback_interval
            changes = self._diff(self._scan())
            if changes:
                return changes

    def _diff(self, snapshot: dict[str, _Stat]) -> Changes:
        old = self._snapshot
        self._snapshot = snapshot
        changes = Changes()
        changed = {name for name, st in snapshot.items() if old.get(name) != st}
        changes.removed = set(old) - set(snapshot)
        # Unchanged for a whole interval after a change: the writer is probably done.
        changes.settled = {n for n in self._unsettled if n in snapshot and n not in changed}
        changes.names = changed | changes.removed | changes.settled
        self._unsettled = changed
        return changes

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._inotify is not None:
            self._inotify.close()
        self._waker.close()


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _remaining(deadline: float | None, cap: float) -> float:
    return cap if deadline is None else min(cap, max(0.0, deadline - time.monotonic()))
