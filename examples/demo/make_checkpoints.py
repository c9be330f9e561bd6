"""Train the demo models briefly and write their checkpoints into ``hub_data/``.

Run once to (re)create the files the demo's local hub serves::

    python examples/demo/make_checkpoints.py

then update the sha256 values with ``pytest-ckpts lock`` (or copy them from the
output). Training is seeded and single-threaded, so the files are reproducible on
one torch version; the manifest's sha256 is what guarantees the bytes either way.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from models import TinyDenoiser, TinyVAE, demo_batch

HUB_DATA = Path(__file__).parent / "hub_data"
VAE_PATH = HUB_DATA / "vae" / "tiny_vae_v1.pt"
DENOISER_PATH = HUB_DATA / "denoiser" / "tiny_denoiser_v1.safetensors"


def train_vae() -> TinyVAE:
    torch.manual_seed(0)
    model = TinyVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(300):
        x = demo_batch(64, seed=step)
        mu, logvar = model.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = model.decode(z)
        kl = -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
        loss = torch.mean((recon - x) ** 2) + 1e-3 * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def train_denoiser() -> TinyDenoiser:
    torch.manual_seed(1)
    model = TinyDenoiser()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        z0 = torch.randn(64, 4)
        t = torch.randint(0, model.steps, (64,))
        alpha = (1 - t.float() / model.steps)[:, None]
        noise = torch.randn_like(z0)
        zt = alpha.sqrt() * z0 + (1 - alpha).sqrt() * noise
        loss = torch.mean((model(zt, t) - noise) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def main() -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    VAE_PATH.parent.mkdir(parents=True, exist_ok=True)
    DENOISER_PATH.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": train_vae().state_dict(), "config": {"latent": 4}}, VAE_PATH)
    save_file(train_denoiser().state_dict(), str(DENOISER_PATH))
    for path in (VAE_PATH, DENOISER_PATH):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{path.relative_to(HUB_DATA)}  {path.stat().st_size} bytes  sha256 {digest}")


if __name__ == "__main__":
    main()
