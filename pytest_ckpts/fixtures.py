"""Fixtures registered by the plugin.

Each fixture is a thin wrapper: the engine it hands out lives in its own module
and is imported inside the fixture body, so a run that never uses a fixture never
pays for torch, safetensors or mlflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .baseline import BaselineChecker
    from .checkpoint import Checkpoint
    from .experiments import CheckpointManager
    from .testing.hub import LocalHub

__all__ = [
    "checkpoint",
    "checkpoint_manager",
    "checkpoint_tensors",
    "checkpoints",
    "ckpt_baseline",
    "local_hub",
]

#: pytest's option that rewrites baselines (the checker names it in every failure).
UPDATE_FLAG = "--ckpts-update-baselines"


@pytest.fixture
def checkpoints(request: pytest.FixtureRequest) -> Mapping[str, Checkpoint]:
    """The checkpoints named by the test's ``requires_checkpoints`` marker, resolved.

    ::

        @pytest.mark.requires_checkpoints("mp_20_vae", "mp_20_ldm")
        def test_forward(checkpoints):
            state = checkpoints["mp_20_vae"].load()   # mapped, weights_only=True

    They were downloaded and verified at setup; a test whose checkpoints are not
    available was skipped (or errored, under ``--ckpts=require``) before this runs.
    """
    from types import MappingProxyType

    from .session import RESOLVED_KEY

    return MappingProxyType(dict(request.node.stash.get(RESOLVED_KEY, {})))


@pytest.fixture
def checkpoint(request: pytest.FixtureRequest) -> Callable[[str], Checkpoint]:
    """Resolve a checkpoint on demand, with the same policy as the marker::

        def test_lazy(checkpoint):
            path = checkpoint("mp_20_vae").path

    Unavailable checkpoints skip the test (``auto``/``offline``/``skip``) or fail it
    (``require``); a checksum mismatch always fails it.
    """
    from .session import get_session

    session = get_session(request.config)

    def resolve(name: str) -> Checkpoint:
        __tracebackhide__ = True
        return session.resolve_for_test(name, request.node)

    return resolve


@pytest.fixture
def checkpoint_tensors(
    request: pytest.FixtureRequest,
) -> Callable[[str, Sequence[str]], dict[str, Any]]:
    """Read a few verified tensors of a huge ``.safetensors`` checkpoint, not the file::

        def test_embedding_shape(checkpoint_tensors):
            t = checkpoint_tensors("llm_7b", ["model.embed_tokens.weight"])
            assert t["model.embed_tokens.weight"].shape == (32000, 4096)

    Only the header and the named tensors are fetched (HTTP ``Range``), each checked
    against the entry's tensor index (``pytest-ckpts lock --tensors NAME``), and kept in
    the cache. Same policy as ``checkpoint``: unavailable -> skip (``require``: fail);
    a digest mismatch, a stale or missing index always fails.
    """
    from .session import get_session

    session = get_session(request.config)

    def read(name: str, tensor_names: Sequence[str]) -> dict[str, Any]:
        __tracebackhide__ = True
        names = [tensor_names] if isinstance(tensor_names, str) else list(tensor_names)
        return session.resolve_tensors_for_test(name, names, request.node)

    return read


@pytest.fixture
def local_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalHub]:
    """A Hugging Face Hub stand-in serving HTTP on 127.0.0.1 for one test.

    The real ``huggingface_hub`` client talks to it; use it to test your own
    checkpoint code offline::

        def test_download(local_hub, tmp_path):
            local_hub.add_file("org/repo", "model.ckpt", b"weights")
            path = hf_hub_download("org/repo", "model.ckpt",
                                   endpoint=local_hub.endpoint, cache_dir=tmp_path)
            assert local_hub.stats.bodies_served == 1

    The stand-in has no Xet storage, so for the test huggingface_hub uploads over
    the plain LFS protocol (as with ``HF_HUB_DISABLE_XET=1``).
    """
    from huggingface_hub import constants

    from .testing.hub import LocalHub

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with LocalHub(upload_dir=tmp_path / "local-hub-uploads") as hub:
        yield hub


@pytest.fixture
def checkpoint_manager(tmp_path: Path) -> CheckpointManager:
    """A ``CheckpointManager`` rooted in ``tmp_path / "logs"`` (hash-named experiment dirs).

    Each test gets its own root, so a training-loop test can assert the exact files
    its loop wrote::

        from pytest_ckpts.testing.experiments import assert_experiment_layout

        def test_training_loop_saves(checkpoint_manager, model, optimizer):
            h, is_new = checkpoint_manager.update_experiment_hash(model, config, uids)
            checkpoint_manager.save_model_checkpoint(model, step=100, optimizer=optimizer)
            assert_experiment_layout(checkpoint_manager.root, h, steps=[100])

    Needs torch (``pip install "pytest-ckpts[torch]"``) once a checkpoint is saved.
    """
    from .experiments import CheckpointManager

    return CheckpointManager(tmp_path / "logs")


def _name_without_repeat(request: pytest.FixtureRequest) -> str:
    """The test's name without pytest-repeat's ``[i-n]`` id: repetitions share one baseline.

    pytest-repeat parametrizes ``__pytest_repeat_step_number`` from a ``trylast``
    hook, after ``@pytest.mark.parametrize``, so its id is the last one; only that
    id is dropped (``test_x[a-1-2]`` -> ``test_x[a]``), never a user's own ids.
    """
    name = str(request.node.name)
    callspec = getattr(request.node, "callspec", None)
    params = getattr(callspec, "params", {})
    if "__pytest_repeat_step_number" not in params or not name.endswith("]"):
        return name
    marker = request.node.get_closest_marker("repeat")
    count = marker.args[0] if marker is not None and marker.args else None
    count = count or request.config.getoption("count", None)
    repeat_id = f"{params['__pytest_repeat_step_number'] + 1}-{count}"
    base, _, ids = name[:-1].partition("[")
    if ids == repeat_id:
        return base
    if ids.endswith(f"-{repeat_id}"):
        return f"{base}[{ids[: -len(repeat_id) - 1]}]"
    return name


def _baseline_dir(request: pytest.FixtureRequest) -> Path:
    from .session import get_session

    root = get_session(request.config).settings.baselines_dir
    module = Path(str(request.node.path)).stem
    # test methods keep their class ("TestVae.test_out") so two classes in one module
    # never share (and, under xdist, race on) one baseline directory
    classes = [n.name for n in request.node.listchain() if isinstance(n, pytest.Class)]
    name = ".".join([*classes, _name_without_repeat(request)])
    for ch in '<>:"/\\|?*[] ':
        name = name.replace(ch, "_")
    return root / module / name


@pytest.fixture
def ckpt_baseline(request: pytest.FixtureRequest) -> BaselineChecker:
    """Compare tensors with a stored ``.safetensors`` baseline tied to the checkpoint.

    ::

        @pytest.mark.requires_checkpoints("demo_vae")
        def test_vae_output(checkpoints, ckpt_baseline):
            out = model(x)
            ckpt_baseline.check("recon", out, rtol=1e-5, atol=1e-6)

    A missing baseline is written and the test fails; ``--ckpts-update-baselines``
    rewrites mismatching baselines and passes.
    """
    from .baseline import BaselineChecker
    from .session import get_session, used_checkpoint_shas

    return BaselineChecker(
        directory=_baseline_dir(request),
        update=get_session(request.config).settings.update_baselines,
        update_option=UPDATE_FLAG,
        checkpoint_shas=lambda: used_checkpoint_shas(request.node),
    )
