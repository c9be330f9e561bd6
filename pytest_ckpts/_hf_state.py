"""What pytest-ckpts hands huggingface_hub 2.4.0 so that it changes nothing process-wide
and talks to no host but the configured endpoint: our own ``User-Agent``, and, where the
library has no per-call switch, its constants set for one call and restored under a lock.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["hf_constants", "user_agent"]


@functools.cache
def _own_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-ckpts")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def user_agent() -> str:
    """The ``User-Agent`` of our own requests, built here rather than by
    ``huggingface_hub.utils.build_hf_headers``: in huggingface_hub 2.4.0 that function
    calls ``_http_user_agent``, which (unless ``constants.HF_HUB_DISABLE_TELEMETRY``)
    calls ``detect_agent()``, whose first call per ``HF_HOME`` per day sends
    ``GET <HF_ENDPOINT read at import>/api/agent-harnesses`` (SPEC §11): to the public hub
    whatever endpoint the request is for. It has no per-call switch."""
    import platform

    from huggingface_hub import __version__ as hf_version
    from huggingface_hub import constants

    agent = (
        f"pytest-ckpts/{_own_version()}; hf_hub/{hf_version}; python/{platform.python_version()}"
    )
    origin = constants.HF_HUB_USER_AGENT_ORIGIN  # the user's own tag, as the client sends it
    return f"{agent}; origin/{origin}" if origin else agent


#: Serialises the huggingface_hub constants :func:`hf_constants` sets for one upload.
_HF_CONSTANTS_LOCK = threading.Lock()


@contextmanager
def hf_constants(*, progress_bars: bool = True, **values: Any) -> Iterator[None]:
    """Set ``huggingface_hub.constants`` for one call and restore them, under a lock;
    ``progress_bars=False``: its progress bars off for the call too.

    Only for what huggingface_hub 2.4.0 offers no per-call switch for (see
    :func:`pytest_ckpts.hub_client.create_commit`). Two uploads of this process never
    interleave their changes; another thread of the process that reads these constants
    meanwhile sees them set (telemetry off, Xet off, bars off: the quieter choice).
    """
    from huggingface_hub import constants

    # The bars' switch is the module dict ``progress_bar_states`` behind
    # ``disable_progress_bars()``, whose context manager re-enables them all on exit
    # instead of restoring what was there: saved and restored here as a whole.
    bars: dict[str, bool] = importlib.import_module(
        "huggingface_hub.utils.tqdm"
    ).progress_bar_states
    with _HF_CONSTANTS_LOCK:
        saved = {name: getattr(constants, name) for name in values}
        saved_bars = dict(bars)
        try:
            for name, value in values.items():
                setattr(constants, name, value)
            if not progress_bars:
                bars.clear()
                bars["_global"] = False
            yield
        finally:
            for name, value in saved.items():
                setattr(constants, name, value)
            bars.clear()
            bars.update(saved_bars)
