"""``isa-distill`` as ``python -m isa_distill`` runs it, except that rank 1 raises in its third
outer step. Run by torchrun from test_distributed.py: the launch must fail, clearly and fast."""

from __future__ import annotations

import os
import sys

from isa_distill import cli
from isa_distill import distill as distill_module

FAILING_STEP = 3

if os.environ.get("RANK") == "1":
    real_step = distill_module.OuterStep.__call__
    calls = {"n": 0}

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == FAILING_STEP:
            raise RuntimeError(f"rank 1 fails on purpose in step {FAILING_STEP}")
        return real_step(self, *args, **kwargs)

    distill_module.OuterStep.__call__ = failing_step

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
