"""Settings that name something on the device's own disk: a file to read or write, a library
to load. They are marked where they are declared (`Annotated[str, LOCAL_ONLY]`), in the
settings and in every plugin's config alike, so a remote change can be checked against all
of them without a list kept by hand."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class LocalOnly:
    """Metadata marker: a value only the device's own config file may introduce."""

    def __repr__(self) -> str:
        return "LOCAL_ONLY"


LOCAL_ONLY = LocalOnly()


def local_values(model: BaseModel, prefix: str = "") -> set[tuple[str, str]]:
    """(key pattern, value) for every marked field set to something other than its default.
    Names of models, sources and pipelines, and list positions, read as `*`."""
    found: set[tuple[str, str]] = set()
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if any(isinstance(m, LocalOnly) for m in field.metadata):
            if value is not None and value != "" and value != field.get_default():
                found.add((key, str(value)))
            continue
        for child in _children(value):
            found |= local_values(child, f"{key}.*." if child is not value else f"{key}.")
    return found


def _children(value: Any) -> list[BaseModel]:
    if isinstance(value, BaseModel):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, BaseModel)]
    return []


def matches(pattern: str, key: str) -> bool:
    """`models.*.path` matches `models.*.path`; `*` in a pattern also stands for one level."""
    want, have = pattern.split("."), key.split(".")
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have, strict=True))
