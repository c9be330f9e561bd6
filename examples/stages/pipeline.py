"""A four-stage pipeline in miniature: training, HPO, benchmark, conversion.

Every stage logs to MLflow through pytest-ckpts' stage helpers, archive-first: each
checkpoint directory leaves the machine as one verified ``.tar.gz``. Training writes
hash-named experiment directories (``pytest_ckpts.experiments``).

The conversion stage stands in for an ONNX export: ``torch.onnx.export`` needs the
``onnx`` package, which this example does not require, so it writes ``model.onnx`` as
a small placeholder (a JSON header plus the float32 weights), NOT a valid ONNX model.
What the example shows is the upload path, which is the same for a real export.

    python examples/stages/pipeline.py stages-demo    # against MLFLOW_TRACKING_URI
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import torch
from torch import nn

from pytest_ckpts.experiments import CheckpointManager
from pytest_ckpts.uploads import (
    upload_benchmark_artifacts,
    upload_conversion_artifacts,
    upload_hpo_artifacts,
    upload_training_artifacts,
)

UIDS = [f"sample_{i:03d}" for i in range(64)]


def make_model(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 1))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    return x, x.sum(dim=1, keepdim=True)


def train(
    root: Path, lr: float, width: int = 16, steps: int = 30
) -> tuple[CheckpointManager, float]:
    """Train briefly, checkpointing every 10 steps into a hash-named directory."""
    torch.manual_seed(0)
    model = make_model(width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    mgr = CheckpointManager(root, best_metric="loss")
    mgr.update_experiment_hash(model, {"lr": lr, "width": width, "steps": steps}, UIDS)
    x, y = data()
    loss = torch.tensor(0.0)
    for step in range(1, steps + 1):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            mgr.save_model_checkpoint(
                model, step=step, optimizer=opt, metadata={"loss": loss.item()}
            )
    return mgr, loss.item()


def write_placeholder_onnx(model: nn.Module, path: Path) -> None:
    """Stand-in for ``torch.onnx.export`` (needs ``onnx``): NOT a valid ONNX file.

    A JSON header naming each tensor and its shape, then the raw float32 weights.
    """
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    header = json.dumps({k: list(v.shape) for k, v in state.items()}, sort_keys=True).encode()
    with open(path, "wb") as f:
        f.write(b"PLACEHOLDER-ONNX\n" + len(header).to_bytes(4, "little") + header)
        for name in sorted(state):
            f.write(state[name].numpy().tobytes())


def run_pipeline(workdir: Path) -> dict[str, dict[str, Any]]:
    """Run every stage in its own MLflow run.

    Returns ``{stage: {"run_id", "uploaded", "checkpoint_dir" | "file", ...}}``.
    """
    out: dict[str, dict[str, Any]] = {}

    with mlflow.start_run(run_name="training") as run:
        mgr, loss = train(workdir / "training", lr=1e-2)
        metrics = workdir / "metrics.json"
        metrics.write_text(json.dumps({"loss": loss}))
        ckpt_dir = mgr.exp_dir()
        uploaded = upload_training_artifacts(ckpt_dir, metrics)
        out["training"] = {"run_id": run.info.run_id, "checkpoint_dir": ckpt_dir}
        out["training"]["uploaded"] = all(uploaded.values())

    with mlflow.start_run(run_name="hpo") as run:
        trials = []
        for number, lr in enumerate((1e-3, 3e-3, 1e-2)):
            trial_mgr, trial_loss = train(workdir / "hpo" / f"trial_{number}", lr=lr)
            mlflow.log_metric("trial_loss", trial_loss, step=number)
            trials.append((trial_loss, number, trial_mgr))
        _, best_number, best_mgr = min(trials, key=lambda t: t[0])
        out["hpo"] = {
            "run_id": run.info.run_id,
            "checkpoint_dir": best_mgr.exp_dir(),
            "trial": best_number,
            "uploaded": upload_hpo_artifacts(best_mgr.exp_dir(), trial_number=best_number),
        }

    best_dir = out["hpo"]["checkpoint_dir"]
    model = make_model(16)
    best_mgr.load_latest_checkpoint(model)
    model.eval()

    with mlflow.start_run(run_name="benchmark") as run:
        x, _ = data()
        started = time.perf_counter()
        with torch.no_grad():
            for _ in range(50):
                model(x)
        results = workdir / "benchmark.json"
        results.write_text(json.dumps({"latency_ms": (time.perf_counter() - started) * 20}))
        uploaded = upload_benchmark_artifacts(results, best_dir)
        out["benchmark"] = {"run_id": run.info.run_id, "checkpoint_dir": best_dir}
        out["benchmark"]["uploaded"] = all(uploaded.values())

    with mlflow.start_run(run_name="conversion") as run:
        exported = workdir / "model.onnx"
        write_placeholder_onnx(model, exported)
        out["conversion"] = {
            "run_id": run.info.run_id,
            "file": exported,
            "uploaded": upload_conversion_artifacts(exported),
        }
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "stages-demo")
    target.mkdir(parents=True, exist_ok=True)
    for stage, info in run_pipeline(target).items():
        print(f"{stage:<11} run {info['run_id']}")
