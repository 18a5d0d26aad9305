"""The run's pictures: drawn whatever the class names are."""

from __future__ import annotations

import json
import warnings

from test_export import make_run

from isa_distill.plots import IMAGES_PNG, render_run
from isa_distill.runs import META


def test_class_names_in_any_script_or_not_unicode_are_drawn_without_noise(tmp_path):
    run_dir = make_run(tmp_path / "run", channels=3, zca=False)
    meta = json.loads((run_dir / META).read_text())
    # CJK the default font lacks; a folder name that was not UTF-8 (a surrogate escape).
    meta["class_names"] = ["猫", "caf\udce9", "Bag"]
    (run_dir / META).write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = render_run(run_dir)
    assert run_dir / IMAGES_PNG in written and (run_dir / IMAGES_PNG).stat().st_size > 0
