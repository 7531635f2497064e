"""Native libraries (the TFLite runtime, libpng inside OpenCV) print straight to file
descriptor 2. Around a model load or an image decode that output goes to the debug log,
since the agent reports every failure with its reason anyway."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def native_stderr_to_debug_log(log: logging.Logger) -> Iterator[list[str]]:
    """Yields a list that holds the captured lines once the block is left: LiteRT's
    CompiledModel raises with a bare source location and logs the cause."""
    sys.stderr.flush()
    captured: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if line.strip():
                    captured.append(line)
                    log.debug("native: %s", line)
