#!/usr/bin/env python3
"""Checks a built wheel's METADATA as an index and pip read it (scripts/check_wheel.sh):

- `License-Expression: Apache-2.0` (Metadata-Version 2.4+), the licence file, no legacy
  `License:` field;
- the project URLs (Homepage, Documentation, Source, Issues), each https;
- for every extra on x86-64, aarch64 and 32-bit Arm, with Python 3.10 and 3.11: wherever
  tflite-runtime is installed, NumPy < 2 and an OpenCV that supports NumPy 1 (< 4.12) are
  too; `agent` installs LiteRT except on 32-bit Arm, tflite-runtime there; `tflite` is the
  `agent` extra with tflite-runtime for LiteRT.

    python3 scripts/check_wheel_metadata.py dist/edge_agent-*.whl

One line per problem and exit 1, or one summary line and exit 0.
"""

from __future__ import annotations

import sys
import zipfile
from email.parser import HeaderParser

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare Python: pip vendors it
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

PROJECT = "edge-agent"
LICENSE = "Apache-2.0"
URLS = ("Homepage", "Documentation", "Source", "Issues")
MACHINES = ("x86_64", "aarch64", "armv7l")
PYTHONS = ("3.10", "3.11")
# The first NumPy and OpenCV releases tflite-runtime 2.14 cannot run beside, and a release of
# each that it can.
NUMPY_BAD, NUMPY_GOOD = "2.0.0", "1.26.4"
OPENCV_BAD, OPENCV_GOOD = "4.12.0.88", "4.11.0.86"
RUNTIMES = {"ai-edge-litert", "tflite-runtime"}


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed(
    requires: list[Requirement], extras: set[str], machine: str, python: str
) -> dict[str, list[Requirement]]:
    """The requirements pip would act on for `PROJECT[extras]` on that machine, by name
    (a self-reference such as `edge-agent[agent]` followed)."""
    chosen: dict[str, list[Requirement]] = {}
    todo, seen = list(extras | {""}), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        env = {"platform_machine": machine, "python_version": python, "extra": extra}
        for req in requires:
            # The base install's requirements are those whose marker names no extra.
            if (req.marker is not None and "extra" in str(req.marker)) != bool(extra):
                continue
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if canonical(req.name) == PROJECT:
                todo.extend(req.extras)
                continue
            chosen.setdefault(canonical(req.name), []).append(req)
    return chosen


def admits(reqs: list[Requirement], version: str) -> bool:
    return all(req.specifier.contains(version, prereleases=True) for req in reqs)


def without_marker(req: Requirement) -> str:
    return f"{canonical(req.name)}{req.specifier}"


def check(path: str) -> list[str]:
    with zipfile.ZipFile(path) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        meta = HeaderParser().parsestr(wheel.read(name).decode())
    problems = []

    version = tuple(int(x) for x in meta["Metadata-Version"].split("."))
    if version < (2, 4):
        problems.append(
            f"Metadata-Version {meta['Metadata-Version']}: License-Expression needs 2.4"
        )
    if meta["License-Expression"] != LICENSE:
        problems.append(f"License-Expression is {meta['License-Expression']!r}, not {LICENSE!r}")
    if meta["License"] is not None:
        problems.append(f"a legacy License field beside the expression: {meta['License']!r}")
    if "LICENSE" not in (meta.get_all("License-File") or []):
        problems.append("License-File does not name LICENSE")

    urls = {}
    for line in meta.get_all("Project-URL") or []:
        label, _, url = line.partition(",")
        urls[label.strip()] = url.strip()
    for label in URLS:
        if not urls.get(label, "").startswith("https://"):
            problems.append(f"Project-URL {label}: {urls.get(label, 'missing')}")

    requires = [Requirement(line) for line in meta.get_all("Requires-Dist") or []]
    extras = meta.get_all("Provides-Extra") or []
    for wanted in ("agent", "tflite"):
        if wanted not in extras:
            problems.append(f"no `{wanted}` extra")
    for machine in MACHINES:
        for python in PYTHONS:
            where = f"on {machine}, Python {python}"
            for extra in ["", *extras]:
                got = installed(requires, {extra} if extra else set(), machine, python)
                label = f"edge-agent[{extra}] {where}" if extra else f"edge-agent {where}"
                if "tflite-runtime" not in got:
                    continue
                numpy = got.get("numpy", [])
                if not numpy or admits(numpy, NUMPY_BAD) or not admits(numpy, NUMPY_GOOD):
                    problems.append(
                        f"{label}: tflite-runtime with numpy "
                        f"{', '.join(str(r.specifier) for r in numpy) or 'unbounded'} "
                        f"(wanted {NUMPY_GOOD} allowed, {NUMPY_BAD} not)"
                    )
                opencv = got.get("opencv-python-headless", [])
                if opencv and (admits(opencv, OPENCV_BAD) or not admits(opencv, OPENCV_GOOD)):
                    problems.append(
                        f"{label}: tflite-runtime with opencv-python-headless "
                        f"{', '.join(str(r.specifier) for r in opencv)} (needs NumPy 2 from "
                        f"{OPENCV_BAD})"
                    )
            agent = installed(requires, {"agent"}, machine, python)
            runtime = "tflite-runtime" if machine == "armv7l" else "ai-edge-litert"
            if set(agent) & RUNTIMES != {runtime}:
                problems.append(f"edge-agent[agent] {where}: runtimes {set(agent) & RUNTIMES}")
            tflite = installed(requires, {"tflite"}, machine, python)
            if set(tflite) & RUNTIMES != {"tflite-runtime"}:
                problems.append(f"edge-agent[tflite] {where}: runtimes {set(tflite) & RUNTIMES}")
            # The same packages but the runtime and the NumPy 1 pins.
            pinned = RUNTIMES | {"numpy", "opencv-python-headless"}
            rest_agent = {
                without_marker(r) for n, rs in agent.items() if n not in pinned for r in rs
            }
            rest_tflite = {
                without_marker(r) for n, rs in tflite.items() if n not in pinned for r in rs
            }
            if rest_agent != rest_tflite:
                problems.append(
                    f"`agent` and `tflite` differ beside the runtime {where}: "
                    f"only in agent {sorted(rest_agent - rest_tflite)}, "
                    f"only in tflite {sorted(rest_tflite - rest_agent)}"
                )
    return sorted(set(problems), key=problems.index)


def main() -> int:
    problems = check(sys.argv[1])
    for problem in problems:
        print(f"METADATA: {problem}", file=sys.stderr)
    if not problems:
        print(
            f"metadata: License-Expression {LICENSE}, Project-URL {', '.join(URLS)}; "
            "NumPy < 2 wherever tflite-runtime is installed",
            file=sys.stderr,
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
