#!/usr/bin/env bash
# Runs edge-agent on its shipped default, from a fresh clone: sets up .venv, then runs
# the shipped models on the shipped samples and benchmarks the MobileNet-class model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh main
bin=.venv/bin/edge-agent
echo "== edge-agent infer: digits classifier on sample images"
"$bin" infer models/digits_int8.tflite models/samples/digit_*.png
echo "== edge-agent infer: detector on a sample scene (letterboxed)"
"$bin" infer models/detector_int8.tflite models/samples/detector_scene.png
echo "== edge-agent bench: MobileNetV2 int8"
"$bin" bench models/mobilenet_v2_int8.tflite --runs 300 "$@"
