"""The demo suite: tests that need trained checkpoints, written the pytest-ckpts way."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from models import TinyDenoiser, TinyVAE, demo_batch

from pytest_ckpts import Checkpoint, get_checkpoint
from pytest_ckpts.baseline import BaselineChecker


@pytest.fixture
def vae(checkpoints: dict[str, Checkpoint]) -> TinyVAE:
    model = TinyVAE()
    payload = checkpoints["demo_vae"].load()  # memory-mapped torch.load(weights_only=True)
    model.load_state_dict(payload["state_dict"])
    return model.eval()


@pytest.mark.requires_checkpoints("demo_vae")
def test_vae_reconstructs_training_distribution(vae: TinyVAE) -> None:
    x = demo_batch(32, seed=1234)
    with torch.no_grad():
        error = torch.mean((vae(x) - x) ** 2).item()
    baseline = torch.mean(x**2).item()  # predicting zeros
    assert error < 0.2 * baseline


@pytest.mark.requires_checkpoints("demo_vae")
def test_vae_latent_shape(vae: TinyVAE) -> None:
    mu, logvar = vae.encode(demo_batch(5))
    assert mu.shape == logvar.shape == (5, 4)


@pytest.mark.requires_checkpoints("demo_vae", "demo_denoiser")
def test_denoiser_predicts_noise_better_than_chance(checkpoints: dict[str, Checkpoint]) -> None:
    model = TinyDenoiser()
    model.load_state_dict(checkpoints["demo_denoiser"].load())  # safetensors
    model.eval()
    g = torch.Generator().manual_seed(7)
    z0 = torch.randn(256, 4, generator=g)
    noise = torch.randn(256, 4, generator=g)
    t = torch.full((256,), 50)
    alpha = 0.5
    zt = alpha**0.5 * z0 + (1 - alpha) ** 0.5 * noise
    with torch.no_grad():
        error = torch.mean((model(zt, t) - noise) ** 2).item()
    assert error < 0.8  # predicting zeros scores 1.0


@pytest.mark.requires_checkpoints("demo_vae", "demo_denoiser")
def test_checkpoints_fit_the_model_code(checkpoints: dict[str, Checkpoint]) -> None:
    """Names, shapes and dtypes only: ``tensors()`` reads no weights it is not asked for.

    With multi-GB checkpoints this is the cheap check to run before any forward pass.
    """
    for name, model in (("demo_vae", TinyVAE()), ("demo_denoiser", TinyDenoiser())):
        expected = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
        with checkpoints[name].tensors() as stored:
            assert {k: (stored[k].shape, stored[k].dtype) for k in stored} == expected


@pytest.mark.requires_checkpoints("demo_vae")
def test_vae_latent_head_is_trained(checkpoints: dict[str, Checkpoint]) -> None:
    """One tensor of the checkpoint, read on its own: the rest of the file is not."""
    with checkpoints["demo_vae"].tensors() as stored:
        weight = stored["to_mu.weight"]
    with torch.random.fork_rng():
        torch.manual_seed(0)  # make_checkpoints.py builds the VAE right after this seed
        init = TinyVAE().to_mu.weight.detach()
    assert torch.isfinite(weight).all()
    assert (weight - init).abs().max() > 1e-2  # training moved it away from its init


def test_on_demand_checkpoint(checkpoint: Callable[[str], Checkpoint]) -> None:
    ckpt = checkpoint("demo_denoiser")
    assert ckpt.path.suffix == ".safetensors"
    assert ckpt.verified


@pytest.mark.requires_checkpoints
def test_seed_style_get_checkpoint() -> None:
    """Seed 004's style: call get_checkpoint() yourself; the plugin applies the policy."""
    path = get_checkpoint("demo_vae")
    assert path.name == "tiny_vae_v1.pt"


def test_needs_no_checkpoint() -> None:
    assert TinyVAE()(demo_batch(2)).shape == (2, 16)


@pytest.mark.requires_checkpoints("demo_vae")
def test_vae_output_matches_baseline(vae: TinyVAE, ckpt_baseline: BaselineChecker) -> None:
    """Local baseline regression run: outputs tied to the checkpoint's sha256."""
    with torch.no_grad():
        mu, logvar = vae.encode(demo_batch(4, seed=99))
        recon = vae.decode(mu)
    ckpt_baseline.check("vae_forward", {"mu": mu, "logvar": logvar, "recon": recon}, atol=1e-6)


@pytest.mark.requires_checkpoints("demo_denoiser")
def test_denoiser_output_matches_baseline(
    checkpoints: dict[str, Checkpoint], ckpt_baseline: BaselineChecker
) -> None:
    model = TinyDenoiser()
    model.load_state_dict(checkpoints["demo_denoiser"].load())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        eps = model(torch.randn(4, 4, generator=g), torch.tensor([0, 25, 50, 99]))
    ckpt_baseline.check("denoiser_eps", eps, atol=1e-6)
