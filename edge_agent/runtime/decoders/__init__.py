"""Decoders turn a model's dequantized outputs into results a person can use.

`choose_task` picks a decoder from the outputs when nothing else names one;
`make_decoder` builds a decoder by name (a registered entry point or `module:Class`)
with its options checked by that decoder's own pydantic Config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from edge_agent.errors import UserError
from edge_agent.runtime.decoders.base import (
    Decoder,
    DecoderClass,
    DecoderContext,
    Floats,
    Options,
)
from edge_agent.runtime.decoders.registry import GROUP, DecoderImportError, decoder_class
from edge_agent.runtime.decoders.rules import TaskChoice, choose_task
from edge_agent.runtime.model import TensorSpec

__all__ = [
    "GROUP",
    "Decoder",
    "DecoderClass",
    "DecoderContext",
    "DecoderImportError",
    "Floats",
    "Options",
    "TaskChoice",
    "check_options",
    "choose_task",
    "decoder_class",
    "make_decoder",
]


def check_options(task: str, options: Mapping[str, Any], where: str = "decode") -> Any:
    """The decoder's Config built from `options`; UserError naming `where.KEY` if not."""
    cls = decoder_class(task)
    try:
        return cls.Config.model_validate(dict(options))
    except ValidationError as exc:
        problem = exc.errors()[0]
        key = ".".join(str(p) for p in problem["loc"])
        place = f"{where}.{key}" if key else where
        raise UserError(f"{place}: {problem['msg']} (decoder {task})") from None


def make_decoder(
    task: str,
    options: Mapping[str, Any],
    labels: list[str],
    input_size: tuple[int, int],
    outputs: Sequence[TensorSpec],
    *,
    where: str = "decode",
) -> Decoder:
    """The decoder `task` with `options`; raises UserError with one line on bad options,
    DecoderImportError (a UserError) when a plugin does not import."""
    config = check_options(task, options, where)
    context = DecoderContext(list(labels), input_size, tuple(outputs))
    try:
        return decoder_class(task)(config, context)
    except UserError:
        raise
    except Exception as exc:  # a plugin's constructor may fail any way it likes
        raise UserError(f"decoder {task}: cannot start: {type(exc).__name__}: {exc}") from None
