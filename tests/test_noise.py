"""Behaviour of videodiff.noise: reproducibility, diffusers parity, PYoCo statistics."""

from __future__ import annotations

import math

import pytest
import torch

from videodiff.errors import UserError
from videodiff.noise import (
    NOISE_KINDS,
    expected_correlation,
    frame_correlation,
    sample_noise,
)

SMALL = (1, 4, 5, 8, 8)
# Large enough that sampling error is small: n samples per frame.
BIG = (2, 4, 8, 32, 32)
N_PER_FRAME = BIG[0] * BIG[1] * BIG[3] * BIG[4]
# ~4 standard errors for Gaussian data: SE(mean) = 1/sqrt(n), SE(var) = sqrt(2/n),
# SE(corr) <= 1/sqrt(n). Seeds are fixed, so this is a margin, not a flake rate.
MEAN_TOL = 4 / math.sqrt(N_PER_FRAME)
VAR_TOL = 4 * math.sqrt(2 / N_PER_FRAME)
CORR_TOL = 4 / math.sqrt(N_PER_FRAME)


def gen(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def test_independent_matches_torch_randn_bitwise() -> None:
    for seed in (0, 1, 1234):
        got = sample_noise(SMALL, kind="independent", generator=gen(seed))
        want = torch.randn(SMALL, generator=gen(seed))
        assert got.dtype == torch.float32
        assert torch.equal(got, want)


def test_independent_consumes_generator_like_one_randn() -> None:
    g1, g2 = gen(7), gen(7)
    sample_noise(SMALL, generator=g1)
    torch.randn(SMALL, generator=g2)
    assert torch.equal(g1.get_state(), g2.get_state())


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_same_seed_same_noise_different_seed_different(kind: str) -> None:
    a = sample_noise(SMALL, kind=kind, alpha=1.0, generator=gen(3))
    b = sample_noise(SMALL, kind=kind, alpha=1.0, generator=gen(3))
    c = sample_noise(SMALL, kind=kind, alpha=1.0, generator=gen(4))
    assert a.shape == SMALL
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_dtype_honoured_and_equals_cast_float32(kind: str) -> None:
    full = sample_noise(SMALL, kind=kind, alpha=2.0, generator=gen(5))
    half = sample_noise(SMALL, kind=kind, alpha=2.0, generator=gen(5), dtype=torch.float16)
    assert half.dtype == torch.float16
    assert torch.equal(half, full.to(torch.float16))


def test_device_honoured() -> None:
    # "meta" exercises the .to(device=...) path without needing an accelerator.
    out = sample_noise(SMALL, kind="mixed", generator=gen(0), device="meta")
    assert out.device.type == "meta"
    assert out.shape == SMALL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_cuda_noise_equals_cpu_noise(kind: str) -> None:
    cpu = sample_noise(SMALL, kind=kind, generator=gen(9))
    cuda = sample_noise(SMALL, kind=kind, generator=gen(9), device="cuda")
    assert cuda.device.type == "cuda"
    assert torch.equal(cuda.cpu(), cpu)


def test_wrong_rank_shape_raises_value_error() -> None:
    with pytest.raises(ValueError):
        sample_noise((1, 4, 8, 8))


@pytest.mark.parametrize("kind", ["mixed", "progressive"])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_pyoco_statistics(kind: str, alpha: float) -> None:
    noise = sample_noise(BIG, kind=kind, alpha=alpha, generator=gen(int(alpha * 10)))
    mean = noise.double().mean(dim=(0, 1, 3, 4))
    var = noise.double().var(dim=(0, 1, 3, 4))
    assert (mean.abs() < MEAN_TOL).all(), mean
    assert ((var - 1).abs() < VAR_TOL).all(), var
    corr = frame_correlation(noise)
    want = expected_correlation(kind, alpha, BIG[2])
    assert corr.shape == (BIG[2], BIG[2])
    assert (corr - want).abs().max() < CORR_TOL, (corr - want).abs().max()


def test_independent_frames_uncorrelated() -> None:
    corr = frame_correlation(sample_noise(BIG, generator=gen(11)))
    off = corr - torch.eye(BIG[2], dtype=corr.dtype)
    assert off.abs().max() < CORR_TOL


@pytest.mark.parametrize("kind", ["mixed", "progressive"])
def test_alpha_zero_is_independent(kind: str) -> None:
    assert torch.equal(expected_correlation(kind, 0.0, 4), torch.eye(4, dtype=torch.float64))
    corr = frame_correlation(sample_noise(BIG, kind=kind, alpha=0.0, generator=gen(2)))
    assert (corr - torch.eye(BIG[2], dtype=corr.dtype)).abs().max() < CORR_TOL


def test_expected_correlation_formulas() -> None:
    a = 2.0
    mixed = expected_correlation("mixed", a, 3)
    assert mixed[0, 0] == 1.0
    assert mixed[0, 2] == pytest.approx(a * a / (1 + a * a))
    prog = expected_correlation("progressive", a, 4)
    r = a / math.sqrt(1 + a * a)
    assert prog[0, 3] == pytest.approx(r**3)
    assert prog[2, 1] == pytest.approx(r)
    assert torch.equal(prog, prog.T)


def test_frame_correlation_single_frame_shape() -> None:
    corr = frame_correlation(sample_noise((1, 2, 1, 4, 4), generator=gen(0)))
    assert corr.shape == (1, 1)
    assert corr[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["gaussian", "", "Mixed"])
def test_bad_kind_raises_user_error(kind: str) -> None:
    with pytest.raises(UserError) as info:
        sample_noise(SMALL, kind=kind)
    msg = str(info.value)
    assert "\n" not in msg
    assert repr(kind) in msg and "progressive" in msg


@pytest.mark.parametrize("alpha", [-0.1, float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_bad_alpha_raises_user_error(kind: str, alpha: float) -> None:
    with pytest.raises(UserError) as info:
        sample_noise(SMALL, kind=kind, alpha=alpha)
    assert "\n" not in str(info.value)
    assert repr(alpha) in str(info.value)
    with pytest.raises(UserError):
        expected_correlation(kind, alpha, 4)
