"""What the wheel ships besides code: the documented default config and the example configs
(configs/), the systemd unit (systemd/) and the small model the default config runs
(models/detector_int8). In a checkout these names link to the repository's own folders."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent
DEFAULT_CONFIG = DATA / "configs" / "agent.toml"
EXAMPLES = DATA / "configs" / "examples"
UNIT = DATA / "systemd" / "edge-agent.service"
MODELS = DATA / "models"
