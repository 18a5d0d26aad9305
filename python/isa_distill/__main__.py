"""``python -m isa_distill``: the same as the ``isa-distill`` command."""

from .cli import main

raise SystemExit(main())
