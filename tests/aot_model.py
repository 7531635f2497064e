"""A model declared compiled ahead of time for an NPU, for the tests of that path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import MODELS

DIGITS = MODELS / "digits_int8.tflite"


def aot_model(folder: Path, twin: bool) -> Path:
    """No vendor compiler is available here to compile a model ahead of time for an NPU: the
    'AOT model' is digits' own file under a manifest that declares it compiled for a
    Qualcomm NPU. Its bytes would run on the CPU, so a load that ran them there would show.
    `twin`: the plain digits model beside it, named in the manifest as its cpu_twin."""
    aot = folder / "digits_int8_qnn_sm8650.tflite"
    shutil.copy(DIGITS, aot)
    manifest = json.loads(DIGITS.with_suffix(".json").read_text())
    manifest.update(
        name="digits_npu",
        file=aot.name,
        compiled_for={"vendor": "qualcomm", "soc": "SM8650"},
        cpu_twin=DIGITS.name if twin else None,
    )
    if twin:
        shutil.copy(DIGITS, folder)
        shutil.copy(DIGITS.with_suffix(".json"), folder)
    aot.with_suffix(".json").write_text(json.dumps(manifest))
    return aot
