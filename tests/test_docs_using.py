"""docs/using-a-distilled-set.md works as written: its Python blocks run in order, every
`isa-distill` command it shows parses, and the cheap ones (export) run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from isa_distill.cli import _parser, main

pytestmark = pytest.mark.usefixtures("single_thread")

DOC = Path(__file__).resolve().parents[1] / "docs" / "using-a-distilled-set.md"
BLOCK = re.compile(r"```(python|console)\n(.*?)```", re.S)
RUN_HERE = ("export",)  # commands cheap enough to run; the others are only parsed


def blocks() -> list[tuple[str, str]]:
    return BLOCK.findall(DOC.read_text(encoding="utf-8"))


def commands(code: str) -> list[list[str]]:
    """The ``isa-distill`` command lines of a console block, as argv lists."""
    lines = [line.split(" #")[0].strip() for line in code.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("isa-distill ")]


def test_the_page_has_code_to_check():
    kinds = [kind for kind, _ in blocks()]
    assert kinds.count("python") >= 6 and kinds.count("console") >= 5


@pytest.mark.parametrize("argv", [argv for kind, code in blocks() if kind == "console"
                                  for argv in commands(code)], ids=" ".join)  # fmt: skip
def test_every_documented_command_parses(argv):
    _parser().parse_args(argv)  # an unknown flag or value exits with status 2


def test_the_python_blocks_and_exports_run_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # A short stand-in for the default job's run at the path the page uses.
    assert main(["distill", "--steps", "5", "--width", "8", "--checkpoint-every", "5",
                 "--run-dir", "runs/digits-ipc10", "--no-eval", "--quiet"]) == 0  # fmt: skip
    namespace: dict = {"__name__": "docs"}
    for kind, code in blocks():
        if kind == "python":
            exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102
            continue
        for argv in commands(code):
            if argv[0] in RUN_HERE:
                assert main(argv) == 0, argv
    out = capsys.readouterr().out
    assert "mse:" in out and "cross-entropy:" in out and "KRR:" in out
    assert (tmp_path / "digits-images" / "labels.csv").is_file()
    assert namespace["result"].images.shape == (10, 1, 8, 8)
