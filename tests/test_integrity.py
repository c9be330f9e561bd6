"""Atomic writes: modes come from the umask in force at each write, and the umask is never touched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_each_atomic_write_gets_the_umask_in_force_then(tmp_path: Path) -> None:
    """The temp file is created 0666 and the OS applies the umask: a umask changed by the
    application between two writes is honoured (a cached umask gave the first one forever),
    and pytest-ckpts never calls ``os.umask`` itself (it is process-wide state)."""
    script = f"""
import os
from pathlib import Path
from pytest_ckpts.integrity import atomic_write_bytes
d = Path({str(tmp_path)!r})
os.umask(0o077)
atomic_write_bytes(d / "private", b"x")
os.umask(0o022)
real_umask = os.umask
def no_umask(mask):
    raise AssertionError("pytest-ckpts changed the umask")
os.umask = no_umask
atomic_write_bytes(d / "shared", b"x")
atomic_write_bytes(d / "kept", b"x", mode=0o600)
print(oct((d / "private").stat().st_mode & 0o777), oct((d / "shared").stat().st_mode & 0o777),
      oct((d / "kept").stat().st_mode & 0o777))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["0o600", "0o644", "0o600"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "private", "shared"]
