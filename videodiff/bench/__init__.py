"""Measurements a maintainer re-runs (``videodiff bench ...``); nothing here is imported by rendering.

- :mod:`videodiff.bench.parity`: videodiff against diffusers' ``AnimateDiffPipeline`` on identical weights
  (``bench diffusers``), and the random-weight presets the other benchmarks share.
- :mod:`videodiff.bench.feature_cache`: feature caching on the built-in model (``bench cache``).
- :mod:`videodiff.bench.coldstart`: import, load and render of ``videodiff render`` (``bench coldstart``).
- :mod:`videodiff.bench.long`: time and peak memory of one long render (``bench long``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

BENCH_CACHE = Path(tempfile.gettempdir()) / "videodiff-bench"  # where the presets' random-weight models are built once
