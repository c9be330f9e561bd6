"""Inner suites the pytester modules of tests/plugin/ run, and the files they need."""

from __future__ import annotations

import os
import textwrap

# four checkpoints of 32 KiB, each ending in its own name
FILES = {name: os.urandom(32 * 1024) + name.encode() for name in ("vae", "ldm", "enc", "dec")}

TESTS = textwrap.dedent(
    """
    import hashlib
    import pytest

    @pytest.mark.requires_checkpoints("vae")
    def test_marked(checkpoints):
        ckpt = checkpoints["vae"]
        assert ckpt.path.is_file()
        assert hashlib.sha256(ckpt.path.read_bytes()).hexdigest() == ckpt.sha256

    def test_lazy(checkpoint):
        assert checkpoint("ldm").path.read_bytes().endswith(b"ldm")

    def test_plain():
        pass
    """
)

# three checkpoints of 16 KiB
SMALL_FILES = {name: os.urandom(16 * 1024) + name.encode() for name in ("vae", "dec", "enc")}

# a test that calls the library, marked
LIBRARY_TESTS = textwrap.dedent(
    """
    import pytest
    from pytest_ckpts import get_checkpoint

    @pytest.mark.requires_checkpoints
    def test_library():
        path = get_checkpoint("vae")
        print("HANDED", path)
    """
)
