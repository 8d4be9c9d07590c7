"""``videodiff bench ...`` at the tiniest sizes: each command runs and prints what its docs tables read.

No timing is asserted: these check that the measurements run and report their keys.
"""

from __future__ import annotations

import json

import pytest
from cli_helpers import assert_user_error, invoke, ok

from videodiff.bench.coldstart import PHASES


def test_bench_help_names_match_the_package():
    """The CLI keeps the preset and dtype names torch-free; they are the package's."""
    from videodiff.bench.parity import DTYPES, PRESETS
    from videodiff.cli.bench import BENCH_DTYPES, LEVER_NAMES, PRESET_NAMES
    from videodiff.unet.levers import LEVERS

    assert set(PRESET_NAMES) == set(PRESETS) and set(BENCH_DTYPES) == set(DTYPES) and LEVER_NAMES == LEVERS
    for command in ("diffusers", "cache", "coldstart", "long", "levers"):
        assert "Example:" in ok(invoke("bench", command, "--help")).output


@pytest.mark.slow  # .ci/run runs it (kept out of the default suite for its time)
def test_bench_levers_tiny(tmp_path):
    """The plain path and one lever, one fresh process each on the tiny preset: the table and every key."""
    out = tmp_path / "levers.json"
    args = ("bench", "levers", "channels-last", "--preset", "tiny", "--repeat", "1", "--calls", "2")
    result = ok(invoke(*args, "--cache", tmp_path / "models", "--json", out, env={"OMP_NUM_THREADS": "1"}))
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tiny: one guided U-Net call") and "OMP_NUM_THREADS=1" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["plain", "channels-last"]
    printed = json.loads(out.read_text())
    assert printed["plain"]["max_eps_diff"] == 0.0 and printed["plain"]["first_wall_speedup"] == 1.0
    assert printed["channels-last"]["max_eps_diff"] < 1e-3
    assert len(printed["channels-last"]["runs_wall_s"]) == 1 and len(printed["channels-last"]["runs_wall_s"][0]) == 2


@pytest.mark.slow  # .ci/run runs it (kept out of the default suite for its time)
def test_bench_diffusers_tiny(tmp_path):
    """Both sides in fresh processes on the tiny preset (1 step, 8 frames): parity within tolerance, every key, and
    the side-by-side table; an xformers variant is skipped on the CPU with its reason."""
    out = tmp_path / "bench.json"
    args = ("bench", "diffusers", "--preset", "tiny", "--steps", "1", "--frames", "8", "--cache", tmp_path / "models")
    result = ok(invoke(*args, "--json", out, "--table", "--variants", "videodiff-xformers",
                       env={"OMP_NUM_THREADS": "1"}))
    printed = json.loads(out.read_text())
    assert printed["render"]["num_inference_steps"] == 1 and printed["render"]["num_frames"] == 8
    assert printed["sides"] == ["diffusers", "videodiff"]
    assert printed["skipped_variants"] == {"videodiff-xformers": "xformers runs on CUDA only"}
    for side in ("diffusers", "videodiff"):
        for key in ("s_per_step", "total_s", "peak_mib", "load_s"):
            assert len(printed[f"{side}_{key}"]) == 1, key
        assert printed[f"{side}_total_median_s"] == printed[f"{side}_total_s"][0]
    assert printed["max_pixel_diff"] <= 2 and printed["videodiff_max_pixel_diff"] == printed["max_pixel_diff"]
    assert printed["diffusers_max_pixel_diff"] == 0
    assert {"speedup_per_step_best_of_runs", "speedup_end_to_end_best_of_runs", "mean_pixel_diff"} <= set(printed)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tiny: 8x64x64, 1 steps, fp32 on cpu")
    assert lines[1].split()[:4] == ["side", "s/step", "first", "render"]
    assert [line.split()[0] for line in lines[2:4]] == ["diffusers", "videodiff"]
    assert "(1.00x)" in lines[2] and lines[3].endswith(f"{printed['max_pixel_diff']}/255")
    assert lines[-1] == "skipped videodiff-xformers: xformers runs on CUDA only"


def test_variants_that_cannot_run_here_are_skipped_with_a_reason():
    from videodiff.bench.parity import PRESETS, VARIANTS, runnable_variants

    assert set(PRESETS["gpu-sd15"]["variants"]) == set(VARIANTS)
    usable, skipped = runnable_variants(VARIANTS, "cpu")
    assert usable == ("diffusers-compile",)
    assert set(skipped) == {"diffusers-xformers", "videodiff-xformers"}
    with pytest.raises(ValueError, match="unknown variant"):
        runnable_variants(("diffusers-warp",), "cpu")
    assert "--variants" in assert_user_error(invoke("bench", "diffusers", "--variants", "diffusers-warp"))


def test_bench_long_builtin(one_thread):
    result = ok(invoke("bench", "long", "--frames", "20", "--steps", "1"))
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["model"] == "built-in" and record["frames"] == 20 and record["windows"] == 2
    assert {"render_s", "peak_rss_mib_after_load", "peak_rss_mib", "window_layers"} <= set(record)


@pytest.mark.slow
def test_bench_cache_builtin(tmp_path, one_thread):
    """One warm-up and three renders of the built-in model at its 16 steps, in fp32 and in bf16."""
    out = tmp_path / "cache.json"
    result = ok(invoke("bench", "cache", "--rounds", "1", "--json", out, "--dtype", "bf16", "1"))
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["renders_per_variant"] == 3 and len(printed["cache_1"]["all_s"]) == 3
    assert printed["cache_1"]["speedup"] == 1.0 and printed["cache_1"]["frame_diff_from_first"] == 0.0
    assert len(printed["dtype_bf16"]["all_s"]) == 3 and printed["dtype_bf16"]["frame_diff_from_first"] > 0  # lossy


@pytest.mark.slow
def test_bench_coldstart_one_run():
    """Three fresh processes each rendering the built-in model (about 10 s each on a 2-core CPU)."""
    lines = ok(invoke("bench", "coldstart", "--runs", "1")).stdout.splitlines()
    assert lines[0].startswith("median of 1 fresh processes")
    header = lines[1].split()
    assert header[0] == "imports" and header[1:] == list(PHASES)
    assert [line.split()[0] for line in lines[2:]] == ["deferred", "eager"]
    for line in lines[2:]:
        seconds = dict(zip(PHASES, map(float, line.split()[1:])))
        assert all(v >= 0 for k, v in seconds.items() if k != "exit") and seconds["sampling"] > 0
        assert sum(v for k, v in seconds.items() if k != "total") == pytest.approx(seconds["total"], abs=0.1)


HELP_LOADS_NO_TORCH = """
import sys
from videodiff.cli import cli
for args in (["bench", "diffusers", "--help"], ["bench", "long", "--help"], ["eval", "sweep", "--help"],
             ["eval", "long", "--help"], ["eval", "travel", "--help"]):
    try:
        cli.main(args, prog_name="videodiff", standalone_mode=False)
    except SystemExit:
        pass
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers")))
"""


def test_bench_and_eval_help_load_no_torch():
    """The new commands' argument parsing stays torch-free, as ``render --help`` does (tests/test_layers.py)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", HELP_LOADS_NO_TORCH], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
    assert "--feature-cache" in done.stdout and "--against" in done.stdout
