"""`edge-agent models quantize FLOAT_MODEL --calibration DIR [--eval DIR_OR_NPZ] [-o OUT]`:
an int8 model and its manifest from a float one, with ai-edge-quantizer (the `quantize`
extra), then size, latency and agreement of both printed side by side."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy.typing as npt

    from edge_agent.quantize.compare import Agreement
    from edge_agent.runtime.model import LoadedModel
    from edge_agent.runtime.predictor import Predictor


@dataclass(frozen=True)
class Recipe:
    quantizer_name: str  # the function in ai_edge_quantizer.recipe
    suffix: str  # of the default output file name
    says: str


RECIPES = {
    "int8": Recipe("static_wi8_ai8", "_int8", "weights and activations int8"),
    "int16x8": Recipe("static_wi8_ai16", "_int16x8", "weights int8, activations int16"),
    "weights-int8": Recipe(
        "dynamic_wi8_afp32", "_wi8", "weights int8, activations float (dynamic range)"
    ),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_RUNS = 100  # timed invokes per model for the latency figure
EXTRA_HINT = "pip install 'edge-agent[quantize]'"


def add_parser(actions: Any) -> None:
    from edge_agent.cli.runtime_args import add_runtime_options

    parser = actions.add_parser(
        "quantize",
        help="make an int8 model from a float one; compare size, latency, agreement",
        description="Needs the quantize extra: " + EXTRA_HINT,
    )
    parser.add_argument("model", type=Path, help="float .tflite (its manifest, if any, beside it)")
    parser.add_argument(
        "--calibration", type=Path, required=True, metavar="DIR", help="folder of sample images"
    )
    parser.add_argument(
        "--eval",
        type=Path,
        metavar="DIR_OR_NPZ",
        help="held-out images, or an .npz of input arrays (default: the calibration images)",
    )
    parser.add_argument("-o", "--output", type=Path, help="default: MODEL_int8.tflite beside it")
    parser.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default="int8",
        help="; ".join(f"{name}: {r.says}" for name, r in RECIPES.items()),
    )
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="timed invokes per model")
    parser.add_argument("--json", action="store_true", help="one JSON object with the figures")
    add_runtime_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from edge_agent.cli.runtime_args import open_model, runtime_settings
    from edge_agent.errors import UserError
    from edge_agent.runtime.predictor import Predictor

    recipe = RECIPES[args.recipe]
    if args.runs < 1:
        raise UserError(f"--runs: {args.runs} is not a positive number")
    if not args.model.is_file():
        raise UserError(f"{args.model}: model file not found")
    calibration = _image_files(args.calibration, "calibration folder")
    output = args.output or args.model.with_name(args.model.stem + recipe.suffix + ".tflite")
    if output.resolve() == args.model.resolve():
        raise UserError(f"{output}: the output would overwrite the float model")
    quantizer = _quantizer_module()

    runtime = runtime_settings(args)
    float_model = open_model(args.model, runtime)
    if float_model.input.dtype != np.float32:
        raise UserError(
            f"{args.model}: input is {float_model.input.dtype}, so the model is quantized "
            "already; give its float version"
        )
    float_predictor = Predictor(float_model)
    samples = [float_predictor.load_input(path)[0] for path in calibration]

    started = time.perf_counter()
    try:
        content, repairs, calibrated = _quantize(
            quantizer, args.model.read_bytes(), samples, recipe
        )
    except Exception as exc:  # the quantizer's own failure on this model, said in one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{args.model}: ai-edge-quantizer failed: {first}") from exc
    took_s = time.perf_counter() - started
    _write_model(output, content, float_model, args.recipe)

    quant_model = open_model(output, runtime)
    quant_predictor = Predictor(quant_model)
    eval_names, agreement = _compare(args.eval, calibration, float_predictor, quant_predictor)
    report = {
        "float": str(args.model),
        "output": str(output),
        "recipe": args.recipe,
        "repairs": repairs,
        "calibration_samples": calibrated,
        "quantize_s": round(took_s, 2),
        "size_bytes": {"float": args.model.stat().st_size, "quantized": output.stat().st_size},
        "latency_ms": {
            "float": _latency(float_model, float_predictor, calibration[0], args.runs),
            "quantized": _latency(quant_model, quant_predictor, calibration[0], args.runs),
        },
        "runs": args.runs,
        "threads": float_model.threads,
        "eval": eval_names,
        "agreement": agreement.as_dict(),
        "task": quant_model.manifest.task,
    }
    sys.stdout.write(json.dumps(report) + "\n" if args.json else _table(report, recipe))
    return 0


def _image_files(folder: Path, what: str) -> list[Path]:
    from edge_agent.errors import UserError

    if not folder.is_dir():
        raise UserError(f"{folder}: {what} not found (or not a folder)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        kinds = ", ".join(IMAGE_SUFFIXES)
        raise UserError(f"{folder}: {what} holds no images ({kinds})")
    return files


def _quantizer_module() -> Any:
    from edge_agent.errors import UserError

    try:
        quantizer = importlib.import_module("ai_edge_quantizer.quantizer")
    except ImportError as exc:
        raise UserError(
            f"models quantize needs the quantize extra ({exc.name or 'ai_edge_quantizer'} "
            f"is not installed): {EXTRA_HINT}"
        ) from None
    # Its per-tensor INFO lines say nothing the report below does not.
    logging.getLogger("absl").setLevel(logging.ERROR)
    return quantizer


def _quantize(
    quantizer: Any, content: bytes, samples: list[npt.NDArray[Any]], recipe: Recipe
) -> tuple[bytes, list[str], int]:
    recipes = importlib.import_module("ai_edge_quantizer.recipe")
    from edge_agent.quantize.prepare import attached_files, prepare, reattach_files

    prepared = prepare(content)
    # Its progress bars (tqdm, on stderr) are for a terminal only.
    quiet = contextlib.nullcontext() if sys.stderr.isatty() else _no_stderr()
    with warnings.catch_warnings(), quiet:
        # LiteRT warns that keeping every tensor is for debugging: calibration needs it.
        warnings.filterwarnings("ignore", ".*experimental_preserve_all_tensors")
        qt = quantizer.Quantizer(bytearray(prepared.content))
        qt.load_quantization_recipe(getattr(recipes, recipe.quantizer_name)())
        calibrated = None
        if qt.need_calibration:
            data = [{prepared.input_name: sample[None]} for sample in samples]
            calibrated = qt.calibrate({prepared.signature_key: data})
        result = qt.quantize(calibrated, enable_progress_bar=False, enable_progress_report=False)
    quantized = bytes(result.quantized_model)
    used = len(samples) if calibrated is not None else 0
    return reattach_files(quantized, attached_files(content)), prepared.repairs, used


def _no_stderr() -> contextlib.redirect_stderr[io.StringIO]:
    return contextlib.redirect_stderr(io.StringIO())


def _write_model(output: Path, content: bytes, float_model: LoadedModel, recipe: str) -> None:
    import hashlib
    import shutil

    from edge_agent.durable import write_synced
    from edge_agent.runtime.manifest import manifest_path

    output.parent.mkdir(parents=True, exist_ok=True)
    write_synced(output, content)
    manifest = float_model.manifest
    name = (manifest.name[: 63 - len(recipe)] + "_" + recipe.replace("-", "_")).lower()
    labels = manifest.labels
    if isinstance(labels, str):
        source = float_model.info.path.parent / labels
        if source.parent.resolve() != output.parent.resolve():
            shutil.copyfile(source, output.parent / labels)
    written = manifest.model_copy(
        update={
            "name": name,
            "file": output.name,
            "sha256": hashlib.sha256(content).hexdigest(),
            "cpu_twin": None,
            "description": f"{manifest.description} Quantized ({recipe}) from "
            f"{float_model.info.path.name} by edge-agent models quantize.".strip(),
        }
    )
    text = json.dumps(written.model_dump(mode="json"), indent=2) + "\n"
    write_synced(manifest_path(output), text.encode())


def _eval_samples(
    source: Path | None, calibration: list[Path], predictor: Predictor
) -> tuple[str, list[tuple[npt.NDArray[Any], Any]]]:
    from edge_agent.errors import UserError

    if source is None:
        files = calibration
        label = f"the {len(files)} --calibration images (give --eval for held-out ones)"
    elif source.suffix.lower() == ".npz":
        return _npz_samples(source, predictor)
    else:
        files = _image_files(source, "eval folder")
        label = f"{len(files)} images in {source}"
    if not files:
        raise UserError(f"{source}: nothing to evaluate on")
    return label, [predictor.load_input(path) for path in files]


def _npz_samples(
    source: Path, predictor: Predictor
) -> tuple[str, list[tuple[npt.NDArray[Any], Any]]]:
    import numpy as np

    from edge_agent.errors import UserError

    try:
        arrays = dict(np.load(source, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise UserError(f"{source}: not a readable .npz ({exc})") from None
    shape = predictor.model.input.sample_shape
    samples, used = [], []
    # Arrays of another shape (labels beside the inputs, say) are left aside.
    for key, array in sorted(arrays.items()):
        batch = array[None] if array.shape == shape else array
        if batch.shape[1:] == shape:
            used.append(key)
            samples += [(predictor.tensor_sample(item, f"{source}:{key}"), None) for item in batch]
    if not samples:
        shapes = ", ".join(f"{k} {list(a.shape)}" for k, a in arrays.items()) or "no arrays"
        raise UserError(
            f"{source}: no array fits model input {list(predictor.model.input.shape)} ({shapes})"
        )
    return f"{len(samples)} samples of {', '.join(used)} in {source}", samples


def _compare(
    source: Path | None, calibration: list[Path], float_p: Predictor, quant_p: Predictor
) -> tuple[str, Agreement]:
    from edge_agent.quantize.compare import agree

    label, float_in = _eval_samples(source, calibration, float_p)
    _, quant_in = _eval_samples(source, calibration, quant_p)
    floats, quants, masks = [], [], []
    for (f_sample, f_geometry), (q_sample, q_geometry) in zip(float_in, quant_in, strict=True):
        floats.append(float_p.predict([f_sample], [f_geometry])[0])
        quants.append(quant_p.predict([q_sample], [q_geometry])[0])
        # A segmentation decoder keeps its last class mask (for snapshots).
        f_mask = getattr(float_p.decoder, "last_mask", None)
        q_mask = getattr(quant_p.decoder, "last_mask", None)
        masks.append(None if f_mask is None or q_mask is None else (f_mask, q_mask))
    agreement = agree(
        [p.result for p in floats],
        [p.result for p in quants],
        [p.outputs for p in floats],
        [p.outputs for p in quants],
        masks,
    )
    return label, agreement


def _latency(model: LoadedModel, predictor: Predictor, image: Path, runs: int) -> float:
    from edge_agent.quantize.compare import median_invoke_ms

    return round(median_invoke_ms(model, predictor.load_input(image)[0], runs), 3)


def _table(report: dict[str, Any], recipe: Recipe) -> str:
    size, latency = report["size_bytes"], report["latency_ms"]
    speedup = latency["float"] / latency["quantized"] if latency["quantized"] else 0.0
    rows = [
        f"{report['float']} -> {report['output']} ({report['recipe']}: {recipe.says}), "
        f"{report['calibration_samples'] or 'no'} calibration images, "
        f"{report['quantize_s']:.1f} s",
    ]
    if report["repairs"]:
        rows.append("repaired first: " + "; ".join(report["repairs"]))
    rows += [
        f"{'':12}{'float':>12}{'quantized':>12}",
        f"{'size':12}{_kb(size['float']):>12}{_kb(size['quantized']):>12}"
        f"   {size['quantized'] / size['float']:.2f}x the float size",
        f"{'latency':12}{latency['float']:>9.3f} ms{latency['quantized']:>9.3f} ms"
        f"   {speedup:.2f}x speed-up{' (slower)' if speedup < 1 else ''} "
        f"(median of {report['runs']} invokes, "
        f"{report['threads']} thread{'s' if report['threads'] > 1 else ''})",
        f"{'agreement':12}{report['agreement']['summary']} on {report['eval']}",
    ]
    if report["agreement"]["problems"]:
        rows.append(
            "POOR AGREEMENT: " + "; ".join(report["agreement"]["problems"]) + ". Check the model "
            "before use, or try another --recipe (weights-int8 keeps activations float)"
        )
    return "\n".join(rows) + "\n"


def _kb(size: int) -> str:
    return f"{size / 1024:.1f} KB"
