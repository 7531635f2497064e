"""`EDGE_AGENT_<SECTION>__<KEY>` variables: a layer of settings over the files'.

Names are read without regard to case, as keys are spelled in the files (lower case).
A value that reads as a JSON list or table is one (`EDGE_AGENT_DEVICE__GROUPS='["a"]'`);
any other value is text that the settings' own types convert (`"7"`, `"true"`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

PREFIX = "EDGE_AGENT_"
DELIMITER = "__"


def environment_layer(
    sections: Iterable[str], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The settings the environment sets, nested as in a file; variables that name no
    section are not settings (EDGE_AGENT_CONFIG, say) and are left alone."""
    known = set(sections)
    layer: dict[str, Any] = {}
    for name, value in (os.environ if environ is None else environ).items():
        key = setting_key(name)
        if key is None or key[0] not in known:
            continue
        node = layer
        for part in key[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[key[-1]] = _value(value)
    return layer


def setting_key(name: str) -> tuple[str, ...] | None:
    """The key a variable sets (("mqtt", "host") for EDGE_AGENT_MQTT__HOST), else None."""
    if not name.upper().startswith(PREFIX):
        return None
    key = tuple(name[len(PREFIX) :].lower().split(DELIMITER))
    return None if "" in key else key


def merge_over(data: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """`layer` over `data`, table by table; a settings object in `data` (one built in code)
    merges as its fields."""
    out = dict(data)
    for key, value in layer.items():
        current = out.get(key)
        if isinstance(current, BaseModel):
            current = current.model_dump()
        if isinstance(value, dict) and isinstance(current, Mapping):
            value = merge_over(current, value)
        out[key] = value
    return out


def _value(text: str) -> Any:
    if text[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except ValueError:
            pass  # text after all: the field's type says whether it may be
    return text
