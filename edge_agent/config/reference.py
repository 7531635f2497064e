"""The config reference (docs/config.md, `edge-agent config reference`), written from the
settings models themselves: every key with its type, default and description, and for each
section how a change to it applies. Nothing here is typed by hand, so it cannot go stale."""

from __future__ import annotations

import json
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.config.section import applies_of
from edge_agent.config.settings import AgentSettings

HEADER = """# Configuration reference

Written from the settings models by `edge-agent config reference` (a test keeps this file
current). Every section is a TOML table in `agent.toml`; a remote change (`set_config`)
goes to `remote.toml` over it ([agent.md](agent.md#configuration)). Environment variables override
both: `EDGE_AGENT_SECTION__KEY`, e.g. `EDGE_AGENT_MQTT__HOST`.

Keys marked *local only* name a file or a library: `set_config` never changes them unless
`commands.remote_paths` in the device's own file names them.
"""

# Tags of union members: the key that picks one (a source's kind, a delegate's name).
_TAGS = ("kind", "name")


def reference() -> str:
    out = [HEADER]
    seen: Seen = {}
    for name, field in AgentSettings.model_fields.items():
        applies = applies_of(field.metadata)
        out.append(f"## `[{name}]`\n")
        how = f" A change {applies.describe()}." if applies else ""
        out.append(f"{field.description or ''}{how}\n")
        _section(out, name, field.annotation, seen)
    return "\n".join(out).rstrip() + "\n"


Seen = dict[frozenset[type], str]  # union members already listed -> where


def _section(
    out: list[str], path: str, annotation: Any, seen: Seen, defaults: BaseModel | None = None
) -> None:
    """The table(s) for a field holding a model, a table of models, or a list of them."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        _section(out, path, args[0], seen, defaults)
    elif origin is dict:
        _section(out, f"{path}.NAME", args[1], seen)
    elif origin is list:
        _section(out, f"[{path}]", args[0], seen)
    elif origin in (Union, UnionType):
        present = [a for a in args if a is not NoneType]
        if len(present) == 1:  # an optional table, or an optional list of them
            _section(out, path, present[0], seen, defaults)
            return
        members = [m for m in args if isinstance(m, type) and issubclass(m, BaseModel)]
        first = seen.setdefault(frozenset(members), path)
        if first != path:
            out.append(f"Entries as in `[{first}]`.\n")
            return
        for member in sorted(members, key=_tag_value):
            tag = next((t for t in _TAGS if t in member.model_fields), None)
            value = _tag_value(member)
            out.append(f"### `[{path}]` with `{tag} = {json.dumps(value)}`\n")
            _table(out, path, member, seen)
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        _table(out, path, annotation, seen, defaults)


def _table(
    out: list[str],
    path: str,
    model: type[BaseModel],
    seen: Seen,
    defaults: BaseModel | None = None,
) -> None:
    """`defaults`: the table's own default value, where its fields have none (each outbox
    class has its own policy)."""
    if model.__doc__ and model.__doc__ != BaseModel.__doc__:
        out.append(" ".join(model.__doc__.split()) + "\n")
    out.append("| key | type | default | description |")
    out.append("|---|---|---|---|")
    nested: list[tuple[str, Any, BaseModel | None]] = []
    for key, field in model.model_fields.items():
        if _holds_model(field.annotation):
            nested.append((f"{path}.{key}", field.annotation, _model_default(field)))
            continue
        note = " *Local only.*" if LOCAL_ONLY in field.metadata else ""
        description = (field.description or "").replace("|", "\\|") + note
        name = field.alias or key
        default = _default(field, getattr(defaults, key, PydanticUndefined))
        out.append(f"| `{name}` | {_type(field.annotation)} | {default} | {description} |")
    out.append("")
    for sub_path, annotation, sub_defaults in nested:
        out.append(f"#### `[{sub_path}]`\n")
        _section(out, sub_path, annotation, seen, sub_defaults)


def _model_default(field: FieldInfo) -> BaseModel | None:
    value = field.default
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    return value if isinstance(value, BaseModel) else None


def _holds_model(annotation: Any) -> bool:
    if isinstance(annotation, type):
        return issubclass(annotation, BaseModel)
    return any(_holds_model(a) for a in get_args(annotation))


def _tag_value(model: type[BaseModel]) -> str:
    for tag in _TAGS:
        field = model.model_fields.get(tag)
        if field is not None and isinstance(field.default, str):
            return field.default
    return model.__name__


def _type(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type(args[0])
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (Union, UnionType):
        return " \\| ".join(_type(a) for a in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"table of {_type(args[1])}"
    if origin is tuple:
        return "[" + ", ".join(_type(a) for a in args) + "]"
    if annotation is NoneType:
        return "none"
    if annotation is SecretStr:
        return "secret"
    if annotation is Path:
        return "path"
    if isinstance(annotation, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def _default(field: FieldInfo, table_default: Any = PydanticUndefined) -> str:
    if table_default is not PydanticUndefined:
        return "none" if table_default is None else f"`{json.dumps(_plain(table_default))}`"
    if field.default_factory is not None:
        # A factory may read the machine (the host name): only containers are shown.
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, (list, dict)):
            return f"`{json.dumps(_plain(value))}`"
        return "(see description)"
    if field.default is PydanticUndefined:
        return "required"
    if field.default is None:
        return "none"
    return f"`{json.dumps(_plain(field.default))}`"


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
