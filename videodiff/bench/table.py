"""The side-by-side table ``videodiff bench diffusers --table`` prints from :func:`videodiff.bench.parity.run_parity`'s
results: one row per side, medians over its fresh processes, speed-ups against diffusers as shipped."""

from __future__ import annotations

import statistics
from typing import Any


def side_by_side(results: dict[str, Any]) -> list[str]:
    """One header line, one column line, one row per side (``results["sides"]``: diffusers first)."""
    repeated = "diffusers_repeat_median_s" in results
    base_first = results["diffusers_total_median_s"]
    base_repeat = results.get("diffusers_repeat_median_s")
    base_step = statistics.median(results["diffusers_s_per_step"])
    render = results["render"]
    lines = [
        f"{results['preset']}: {render['num_frames']}x{render['height']}x{render['width']}, "
        f"{render['num_inference_steps']} steps, {results['dtype']} on {results['device']} ({results['machine']}); "
        f"medians of {results['repeat']} fresh processes per side, order alternating",
        f"{'side':20} {'s/step':>7} {'first render':>14}" + (f" {'repeated':>14}" if repeated else "")
        + f" {'peak MiB':>9} {'max diff':>8}",
    ]
    for side in results["sides"]:
        step = statistics.median(results[f"{side}_s_per_step"])
        first = results[f"{side}_total_median_s"]
        cells = [f"{step:7.3f}", f"{first:6.2f} ({base_first / first:.2f}x)"]
        if repeated:
            again = results[f"{side}_repeat_median_s"]
            cells.append(f"{again:6.2f} ({base_repeat / again:.2f}x)")
        peak = statistics.median(results[f"{side}_peak_mib"])
        lines.append(f"{side:20} " + " ".join(f"{c:>14}" if i else c for i, c in enumerate(cells))
                     + f" {peak:9.0f} {results[f'{side}_max_pixel_diff']:>4}/255")
    lines.append("speed-up per step against diffusers (medians): "
                 + ", ".join(f"{side} {base_step / statistics.median(results[f'{side}_s_per_step']):.2f}x"
                             for side in results["sides"][1:]))
    for name, why in results.get("skipped_variants", {}).items():
        lines.append(f"skipped {name}: {why}")
    return lines
