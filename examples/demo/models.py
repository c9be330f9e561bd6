"""Two tiny but real models for the demo suite: a VAE and a timestep-conditioned denoiser.

They stand in for the multi-GB VAE/LDM checkpoints of a real project: same kind of code
path (build the module, load a state dict from a verified checkpoint, run a forward
pass), small enough to train in a second and ship in the repo.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LATENT = 4
FEATURES = 16


class TinyVAE(nn.Module):
    """A 16 -> 4 -> 16 variational autoencoder."""

    def __init__(self, features: int = FEATURES, latent: int = LATENT, hidden: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(features, hidden), nn.GELU())
        self.to_mu = nn.Linear(hidden, latent)
        self.to_logvar = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.GELU(), nn.Linear(hidden, features)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction (the mean of q(z|x)), as used at test time."""
        mu, _ = self.encode(x)
        return self.decode(mu)


class TinyDenoiser(nn.Module):
    """Predicts the noise added to a latent at diffusion step ``t``."""

    def __init__(self, latent: int = LATENT, hidden: int = 64, steps: int = 100) -> None:
        super().__init__()
        self.steps = steps
        self.net = nn.Sequential(
            nn.Linear(latent + 8, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, latent),
        )

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(1000.0) * torch.arange(4, dtype=torch.float32) / 4)
        angles = t.float()[:, None] / self.steps * 100.0 * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, self.embed(t)], dim=-1))


def demo_batch(n: int = 8, seed: int = 0) -> torch.Tensor:
    """Structured data the VAE was trained on: 4 latent factors mixed into 16 features."""
    g = torch.Generator().manual_seed(seed)
    factors = torch.randn(n, LATENT, generator=g)
    mixing = torch.linspace(-1.0, 1.0, LATENT * FEATURES).reshape(LATENT, FEATURES)
    return torch.tanh(factors @ mixing)
