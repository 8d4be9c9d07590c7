"""Settings written before the render settings were split by stage still render the same video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cli_helpers import invoke, ok, read_json
from PIL import Image

from videodiff.config import RenderConfig, load_config_file, merge

LEGACY = Path(__file__).resolve().parent / "data" / "legacy-render"


def frames_of(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))])


def test_a_legacy_sidecar_maps_onto_the_stages():
    config = merge(load_config_file(LEGACY / "sidecar.json")).validate()
    recorded = read_json(LEGACY / "sidecar.json")
    for part in (config.sample, config.load, config.write):
        for name, value in vars(part).items():
            expected = recorded.get(name, getattr(RenderConfig(), name))  # output/overwrite/quiet are not recorded
            if value == "shapes-teacher":  # the built-in motion modules it rendered with, now beside the default
                assert recorded[name] is None and name in ("motion_module", "motion"), name
                continue
            assert value == (tuple(expected) if isinstance(expected, list) else expected), name


def test_a_legacy_sidecar_renders_the_same_frames(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok(invoke("render", "--config", LEGACY / "sidecar.json", "-o", "again", "-q"))
    before, after = frames_of(LEGACY), frames_of(tmp_path / "again")
    assert before.shape == after.shape == (8, 64, 64, 3)
    # the same code path on the same kind of CPU is bitwise equal; other CPUs' kernels may round differently
    assert np.abs(before.astype(int) - after.astype(int)).max() <= 2
    assert read_json(tmp_path / "again.json")["motion_prior_space"] == "latent"
    assert read_json(tmp_path / "again.json")["info"]["motion_prior_velocity"] == read_json(
        LEGACY / "sidecar.json"
    )["info"]["motion_prior_velocity"]


def test_a_sidecar_from_before_the_motion_prior_space_draws_in_latent_whatever_the_models_default(tmp_path):
    """The built-in model now records motion_prior_space=pixels; a sidecar written before the choice existed
    rendered in latent (the only way then), so it still does. A plain settings file leaves it to the model."""
    assert "motion_prior_space" not in read_json(LEGACY / "sidecar.json")
    assert load_config_file(LEGACY / "sidecar.json")["motion_prior_space"] == "latent"
    plain = tmp_path / "settings.yaml"
    plain.write_text("steps: 12\n", encoding="utf-8")
    assert "motion_prior_space" not in load_config_file(plain)
    recorded = tmp_path / "new.json"
    recorded.write_text('{"motion_prior_space": "pixels", "info": {}}', encoding="utf-8")
    assert load_config_file(recorded)["motion_prior_space"] == "pixels"
