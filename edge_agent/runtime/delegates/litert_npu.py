"""NPU through LiteRT 2's CompiledModel: the vendor's dispatch library runs the model,
its compiler plugin compiles a plain .tflite on the device first (JIT). Each vendor's
libraries come in their own package next to ai-edge-litert."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.runtime.delegates.base import LiteRtAcceleratorConfig

Vendor = Literal["qualcomm", "mediatek", "intel", "google_tensor"]

# The package with each vendor's runtime (Qualcomm QAIRT, MediaTek NeuroPilot, OpenVINO,
# Google Tensor), and the folder of ai_edge_litert/vendors/ that holds its plugins.
_PACKAGE: dict[str, str] = {
    "qualcomm": "ai-edge-litert-sdk-qualcomm",
    "mediatek": "ai-edge-litert-sdk-mediatek",
    "intel": "ai-edge-litert-sdk-intel",
    "google_tensor": "ai-edge-litert-sdk-google-tensor",
}
_VENDOR_DIR: dict[str, str] = {
    "qualcomm": "qualcomm",
    "mediatek": "mediatek",
    "intel": "intel_openvino",
    "google_tensor": "google_tensor",
}


class LiteRtNpuConfig(LiteRtAcceleratorConfig):
    name: Literal["litert_npu"] = "litert_npu"
    accelerator: ClassVar[str] = "NPU"
    vendor: Vendor = Field(description="Whose NPU: qualcomm, mediatek, intel, google_tensor.")
    dispatch_library_path: Annotated[str, LOCAL_ONLY] = Field(
        "",
        description="Folder of the vendor's libLiteRtDispatch_*.so; "
        "empty: the one the vendor's package installs.",
    )
    compiler_plugin_path: Annotated[str, LOCAL_ONLY] = Field(
        "",
        description="Folder of the vendor's libLiteRtCompilerPlugin_*.so, for models not "
        "compiled ahead of time; empty: the one inside ai-edge-litert.",
    )

    def missing(self) -> str:
        if self.dispatch_library_path:
            # LiteRT logs a missing dispatch library once per process, then only says
            # "not accelerated": look for it here instead.
            folder = Path(self.dispatch_library_path)
            if not any(folder.glob("libLiteRtDispatch_*.so")):
                return f"no libLiteRtDispatch_*.so in {folder}"
            return ""
        package = _PACKAGE[self.vendor]
        try:
            importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            return f"{package} is not installed (pip install {package})"
        return ""

    def environment_paths(self) -> dict[str, str]:
        paths = {
            "dispatch_library_path": self.dispatch_library_path,
            "compiler_plugin_path": self.compiler_plugin_path,
        }
        vendors = _vendors_dir()
        if vendors is not None:
            # Pin both to this vendor: LiteRT would otherwise take the first vendor found.
            for key, sub in (
                ("dispatch_library_path", "dispatch"),
                ("compiler_plugin_path", "compiler"),
            ):
                folder = vendors / _VENDOR_DIR[self.vendor] / sub
                if not paths[key] and folder.is_dir():
                    paths[key] = str(folder)
        return {key: value for key, value in paths.items() if value}


def _vendors_dir() -> Path | None:
    spec = importlib.util.find_spec("ai_edge_litert")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "vendors"
