"""Linux IIO sensors (accelerometers, gyroscopes, ADCs...) read through sysfs at a set rate
into sliding windows: value = (in_<channel>_raw + offset) * scale."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.sources.base import Frame, Source, SourceError, SourceUnusable
from edge_agent.sources.windows import WindowedConfig, Windower

log = logging.getLogger(__name__)


class IioConfig(WindowedConfig):
    kind: Literal["iio"] = Field("iio", description="A Linux IIO sensor through sysfs.")
    device: Annotated[str, LOCAL_ONLY] = Field(
        description='"iio:deviceN", or the value of its `name` file (e.g. "lsm6dsl").'
    )
    channels: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-]+$")]] = Field(
        min_length=1,
        description='Channels to sample, e.g. ["accel_x", "accel_y", "accel_z"] for the '
        "files in_accel_x_raw and so on.",
    )
    rate_hz: float = Field(100.0, gt=0, le=10_000, description="Samples per second.")
    sysfs_root: Annotated[Path, LOCAL_ONLY] = Field(
        Path("/sys/bus/iio/devices"), description="Where the IIO devices are listed."
    )


class _Channel:
    def __init__(self, name: str, fd: int, scale: float, offset: float) -> None:
        self.name = name
        self.fd = fd
        self.scale = scale
        self.offset = offset


class IioSource(Source):
    live = True

    def __init__(self, name: str, config: IioConfig, state_dir: Path) -> None:
        super().__init__(name, config, state_dir)
        self.cfg = config
        self._interrupted = threading.Event()
        self._windower = Windower(config.window, config.step, len(config.channels))
        self._channels: list[_Channel] = []
        self._dir = Path()
        self._next = 0.0
        self._index = 0

    def open(self) -> None:
        self._windower.reset()
        self._index = 0
        self._dir = self._find_device()
        try:
            for channel in self.cfg.channels:
                raw, scale, offset = self._channel_files(channel)
                try:
                    fd = os.open(raw, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as err:
                    raise SourceError(f"{raw}: {err.strerror}") from err
                self._channels.append(_Channel(channel, fd, scale, offset))
        except Exception:
            self.close()
            raise
        log.info(
            "source %s: %s, %s",
            self.name,
            self._dir,
            ", ".join(f"{c.name} scale {c.scale:g} offset {c.offset:g}" for c in self._channels),
        )
        self._next = time.monotonic()

    def read(self) -> Frame | None:
        period = 1.0 / self.cfg.rate_hz
        while True:
            delay = self._next - time.monotonic()
            if self._interrupted.wait(delay) if delay > 0 else self._interrupted.is_set():
                raise SourceError("interrupted")
            now = time.monotonic()
            # Fell behind by more than a sample (a stalled bus): restart the schedule
            # rather than reading a burst.
            self._next = now + period if now - self._next > period else self._next + period
            sample = self._sample()
            if sample is None:
                continue
            window = self._windower.push(sample)
            if window is None:
                continue
            if not self._dir.is_dir():
                raise SourceError(f"{self._dir}: the device is gone")
            frame = Frame(window, now, time.time(), self._index, {"rate_hz": self.cfg.rate_hz})
            self._index += 1
            return frame

    def close(self) -> None:
        for channel in self._channels:
            os.close(channel.fd)
        self._channels = []
        self._interrupted.clear()

    def interrupt(self) -> None:
        self._interrupted.set()

    def _sample(self) -> list[float] | None:
        values = []
        for channel in self._channels:
            try:
                raw = float(os.pread(channel.fd, 64, 0))
            except ValueError:  # empty, or not a number
                self.count("bad_samples")
                return None
            except OSError as err:
                if not self._dir.is_dir():
                    raise SourceError(f"{self._dir}: the device is gone") from err
                self.count("bad_samples")
                return None
            values.append((raw + channel.offset) * channel.scale)
        return values

    def _find_device(self) -> Path:
        root = self.cfg.sysfs_root
        wanted = self.cfg.device
        if re.fullmatch(r"iio:device\d+", wanted):
            if (root / wanted).is_dir():
                return root / wanted
        else:
            try:
                devices = sorted(root.glob("iio:device*"))
            except OSError:
                devices = []
            for device in devices:
                if _read_text(device / "name") == wanted:
                    return device
        raise SourceError(f"IIO device {wanted!r} not found under {root}")

    def _channel_files(self, channel: str) -> tuple[Path, float, float]:
        """The raw (or already scaled _input) file, the scale and the offset of a channel.
        Scale and offset come from the channel's own file or the one its type shares
        (in_accel_x -> in_accel_scale), else 1 and 0."""
        raw = self._dir / f"in_{channel}_raw"
        if not raw.exists():
            processed = self._dir / f"in_{channel}_input"
            if processed.exists():
                return processed, 1.0, 0.0
            have = sorted(p.name[3:-4] for p in self._dir.glob("in_*_raw"))
            raise SourceUnusable(
                f"{self._dir}: no channel {channel!r} (it has: {', '.join(have) or 'none'})"
            )
        kind = re.match(r"[a-z]+", channel)
        prefixes = [channel] + ([kind.group()] if kind and kind.group() != channel else [])
        values = []
        for attribute, default in (("scale", 1.0), ("offset", 0.0)):
            value = default
            for prefix in prefixes:
                text = _read_text(self._dir / f"in_{prefix}_{attribute}")
                if text is not None:
                    try:
                        value = float(text)
                    except ValueError as err:
                        raise SourceError(
                            f"{self._dir}/in_{prefix}_{attribute}: not a number: {text!r}"
                        ) from err
                    break
            values.append(value)
        return raw, values[0], values[1]


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
