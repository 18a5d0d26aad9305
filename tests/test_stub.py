"""The hand-written stub `isa_distill/_core.pyi` matches the compiled module (mypy stubtest)."""

import importlib.util
import subprocess
import sys

import pytest

pytest.importorskip("mypy", reason="mypy is not installed")


def test_stub_matches_native_module():
    if importlib.util.find_spec("isa_distill._core") is None:
        pytest.fail("isa_distill._core is not built: run `maturin develop --profile fast`")
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "isa_distill._core"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
