"""The model store: installed versions under `{state_dir}/models/NAME/VERSION/` and
`active.json`, the one record of which version runs (docs/updates.md).

Every change becomes visible in one rename, so a crash or power cut leaves either the old
or the new state; leftovers of an interrupted change are hidden names cleaned at start.
Changes take a thread lock and an flock, so the agent and `edge-agent models` can share it."""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from edge_agent.durable import fsync_path, write_synced
from edge_agent.errors import UserError
from edge_agent.updates.manifest import (
    NAME_PATTERN,
    UPDATE_FILE,
    VERSION_PATTERN,
    UpdateManifest,
    UpdateRefused,
)
from edge_agent.updates.signing import verify_file

log = logging.getLogger(__name__)

ACTIVE_FILE = "active.json"
_LOCK_FILE = ".lock"
_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)


@dataclass(frozen=True)
class ActiveRecord:
    version: str
    previous: str | None
    state: Literal["trial", "committed"]
    since: float


class ModelStore:
    def __init__(self, root: Path, keep_versions: int) -> None:
        self.root = root
        self.keep_versions = keep_versions
        self._lock = threading.RLock()
        if root.is_dir():
            try:
                with self._locked():
                    self._clean_leftovers()
            except PermissionError:
                # A read-only look (`edge-agent models list` as another user) needs no cleanup.
                log.debug("%s: not writable, leftovers not cleaned", root)

    # Reading -----------------------------------------------------------------------------

    def versions(self, name: str) -> builtins.list[str]:
        """Installed versions, oldest install first."""
        folder = self._name_dir(name)
        if not folder.is_dir():
            return []
        found = []
        for entry in folder.iterdir():
            if _VERSION.fullmatch(entry.name) and (entry / UPDATE_FILE).is_file():
                with contextlib.suppress(FileNotFoundError):  # pruned meanwhile
                    found.append((entry.stat().st_mtime_ns, entry.name))
        return [version for _, version in sorted(found)]

    def active(self, name: str) -> ActiveRecord | None:
        path = self._name_dir(name) / ACTIVE_FILE
        try:
            data = json.loads(path.read_bytes())
            record = ActiveRecord(
                version=str(data["version"]),
                previous=None if data.get("previous") is None else str(data["previous"]),
                state=data["state"] if data["state"] in ("trial", "committed") else "trial",
                since=float(data["since"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Writes are atomic, so this is a damaged disk or a hand edit: run the config's file.
            log.warning("%s: unreadable (%s); running the config's model file", path, exc)
            return None
        if not _VERSION.fullmatch(record.version):
            log.warning("%s: bad version %r; running the config's file", path, record.version)
            return None
        return record

    def version_dir(self, name: str, version: str) -> Path:
        return self._name_dir(name) / _check_version(version)

    def manifest(self, name: str, version: str) -> UpdateManifest:
        """The update manifest an installed version came with."""
        path = self.version_dir(name, version) / UPDATE_FILE
        try:
            return UpdateManifest.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise UserError(f"model {name!r}: version {version!r} is not installed") from None

    def model_path(self, name: str) -> Path | None:
        """The active version's model file; None: run the file the config names."""
        record = self.active(name)
        if record is None:
            return None
        try:
            manifest = self.manifest(name, record.version)
        except (UserError, OSError, ValueError) as exc:
            log.warning("model %r: active version %r unusable (%s)", name, record.version, exc)
            return None
        path = self.version_dir(name, record.version) / manifest.files["model"].path
        return path if path.is_file() else None

    # Changing ----------------------------------------------------------------------------

    def install(self, manifest: UpdateManifest, files: Mapping[str, Path]) -> Path:
        """Move the downloaded files (by role) into NAME/VERSION/ under their manifest names,
        checking each once more where it lands. An installed version is kept as it is."""
        name, version = _check_name(manifest.name), _check_version(manifest.version)
        if set(files) != set(manifest.files):
            raise UserError(
                f"model {name!r} {version}: files given {sorted(files)} "
                f"but the manifest lists {sorted(manifest.files)}"
            )
        with self._locked():
            target = self.version_dir(name, version)
            if target.exists():
                if self.manifest(name, version).files != manifest.files:
                    raise UpdateRefused(
                        f"model {name!r}: version {version!r} is already installed "
                        "with different files"
                    )
                return target
            folder = target.parent
            folder.mkdir(parents=True, exist_ok=True)
            temp = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=folder))
            try:
                for role, ref in manifest.files.items():
                    dest = temp / ref.path
                    shutil.move(str(files[role]), dest)
                    verify_file(dest, ref, role)
                    fsync_path(dest)
                write_synced(temp / UPDATE_FILE, manifest.to_json())
                fsync_path(temp)
                # The version appears whole or not at all.
                temp.rename(target)
            except BaseException:
                shutil.rmtree(temp, ignore_errors=True)
                raise
            self._stamp_install_order(name, target)
            fsync_path(folder)
            return target

    def activate(self, name: str, version: str) -> ActiveRecord:
        """Run `version` on trial. `previous` is the last committed version, so a rollback
        never lands on one that was itself still on trial."""
        with self._locked():
            if not self._installed(name, version):
                raise UserError(f"model {name!r}: version {version!r} is not installed")
            current = self.active(name)
            if current is not None and current.version == version:
                return current
            previous: str | None = None
            if current is not None:
                previous = current.version if current.state == "committed" else current.previous
            if previous == version:
                previous = None
            record = ActiveRecord(version, previous, "trial", time.time())
            self._write_active(name, record)
            return record

    def commit(self, name: str) -> ActiveRecord:
        with self._locked():
            current = self.active(name)
            if current is None:
                raise UserError(f"model {name!r}: no update is active, nothing to commit")
            if current.state == "committed":
                return current
            record = ActiveRecord(current.version, current.previous, "committed", time.time())
            self._write_active(name, record)
            return record

    def rollback(self, name: str) -> ActiveRecord | None:
        """Back to the previous version, committed; None: back to the config's own file.
        The version left stays installed but is nobody's `previous`."""
        with self._locked():
            current = self.active(name)
            path = self._name_dir(name) / ACTIVE_FILE
            if current is None and not path.exists():
                raise UserError(f"model {name!r}: no update is active, it runs the config's file")
            # An unreadable record, or a previous version gone, leaves the config's file.
            previous = current.previous if current else None
            if previous is None or not self._installed(name, previous):
                path.unlink()
                fsync_path(path.parent)
                return None
            record = ActiveRecord(previous, None, "committed", time.time())
            self._write_active(name, record)
            return record

    def prune(self, name: str) -> builtins.list[str]:
        """Remove all but the newest `keep_versions` installs; never the active version or
        its previous. Returns the versions removed."""
        with self._locked():
            versions = self.versions(name)
            keep = set(versions[-self.keep_versions :])
            record = self.active(name)
            if record is not None:
                keep.update(v for v in (record.version, record.previous) if v is not None)
            removed = [v for v in versions if v not in keep]
            for version in removed:
                self._delete(name, version)
            if removed:
                fsync_path(self._name_dir(name))
            return removed

    def remove(self, name: str, version: str) -> None:
        """Remove one installed version; never the active one, nor the one a rollback would
        go back to (UserError saying so)."""
        with self._locked():
            if not self._installed(name, version):
                installed = ", ".join(self.versions(name)) or "none"
                raise UserError(
                    f"model {name!r}: version {version!r} is not installed (installed: {installed})"
                )
            record = self.active(name)
            if record is not None and record.version == version:
                raise UserError(
                    f"model {name!r}: version {version!r} is active ({record.state}); "
                    "activate or roll back to another version first"
                )
            if record is not None and record.previous == version:
                raise UserError(
                    f"model {name!r}: version {version!r} is where a rollback from "
                    f"{record.version} goes; it stays while {record.version} is active"
                )
            self._delete(name, version)
            fsync_path(self._name_dir(name))

    def list(self) -> dict[str, dict[str, Any]]:
        """Every model in the store: {name: {versions, active, previous, state, since}}."""
        out: dict[str, dict[str, Any]] = {}
        if not self.root.is_dir():
            return out
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or not _NAME.fullmatch(folder.name):
                continue
            record = self.active(folder.name)
            out[folder.name] = {
                "versions": self.versions(folder.name),
                "active": record.version if record else None,
                "previous": record.previous if record else None,
                "state": record.state if record else None,
                "since": record.since if record else None,
            }
        return out

    # Internals ---------------------------------------------------------------------------

    def _name_dir(self, name: str) -> Path:
        return self.root / _check_name(name)

    def _installed(self, name: str, version: str) -> bool:
        return (self.version_dir(name, version) / UPDATE_FILE).is_file()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            with (self.root / _LOCK_FILE).open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                yield  # the lock goes with the file's close

    def _delete(self, name: str, version: str) -> None:
        folder = self.version_dir(name, version)
        # Renamed first so a crash mid-delete never leaves a half version installed.
        doomed = folder.with_name(f".{version}.del-{os.getpid()}-{time.monotonic_ns()}")
        folder.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def _write_active(self, name: str, record: ActiveRecord) -> None:
        # Only lock holders write, so one fixed temp name will do; a stray one is cleaned.
        folder = self._name_dir(name)
        temp = folder / f"{ACTIVE_FILE}.tmp"
        write_synced(temp, json.dumps(asdict(record)).encode())
        os.replace(temp, folder / ACTIVE_FILE)
        fsync_path(folder)

    def _stamp_install_order(self, name: str, target: Path) -> None:
        # Directory times can tie within a clock tick; make each install strictly newest.
        others = [
            self.version_dir(name, v).stat().st_mtime_ns
            for v in self.versions(name)
            if v != target.name
        ]
        stamp = max([time.time_ns(), *(t + 1 for t in others)])
        os.utime(target, ns=(stamp, stamp))

    def _clean_leftovers(self) -> None:
        for folder in self.root.iterdir():
            if not folder.is_dir() or not _NAME.fullmatch(folder.name):
                continue
            for entry in folder.iterdir():
                if entry.name.startswith(f"{ACTIVE_FILE}.tmp"):
                    entry.unlink(missing_ok=True)
                elif entry.name.startswith(".") and (
                    ".tmp-" in entry.name or ".del-" in entry.name
                ):
                    log.info("removing %s, left by an interrupted install or prune", entry)
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UserError(
            f"model name {name!r}: not a valid name (letters, digits, '_', '.', '-'; no path)"
        )
    return name


def _check_version(version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise UserError(
            f"version {version!r}: not a valid version (letters, digits, '_', '.', '+', '-')"
        )
    return version
