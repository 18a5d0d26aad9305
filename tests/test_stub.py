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


def test_the_top_level_api_is_visible_to_type_checkers(tmp_path):
    # A deliberate type error is only reported when mypy sees the real signatures (a module
    # __getattr__ would make every name Any, and IDEs would not complete them).
    use = tmp_path / "use.py"
    use.write_text(
        "from isa_distill import Distilled, distill_tensors, load_distilled\n"
        "run: Distilled = load_distilled('runs/x')\n"
        "result = distill_tensors(run.pixel_images, run.labels.argmax(1), ipc=1)\n"
        "wrong: str = result.steps_done\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
         "--cache-dir", str(tmp_path / "cache"), str(use)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'use.py:4: error: Incompatible types in assignment (expression has type "int"' in (
        result.stdout), result.stdout
    assert result.stdout.count("error:") == 1, result.stdout
