"""One outer step of `isa_distill.distill` on the CPU preset for digits (the CI dataset).

`distill()` has no single-step entry point, so this repeats the body of its loop with the same
public pieces (`outer_loss`, the optimiser step, `online_step`); a `distill_step` hook in
distill.py would let the benchmark call the loop body itself.
"""

import torch

from isa_distill import distill as pipeline
from isa_distill.data import class_balanced_subset, load_dataset
from isa_distill.data.preprocess import Preprocessor
from isa_distill.presets import preset_config


class DistillStep:
    params = (["rust", "torch"], [10, 50])
    param_names = ["backend", "ipc"]
    timeout = 300

    def setup(self, backend, ipc):
        data = load_dataset("digits")
        self.config = preset_config("digits", "cpu", ipc=ipc, backend=backend)
        self.generators = pipeline.make_generators(0)
        preprocessor = Preprocessor.fit(
            data.train.images, zca=pipeline.resolved_zca(self.config, data.name)
        )
        self.train = pipeline.preprocessed(data.train, preprocessor, "cpu")
        init = class_balanced_subset(data.train, ipc, self.generators["data"])
        self.images = preprocessor.transform(init.images).requires_grad_(True)
        self.labels = pipeline.initial_support_labels(init.labels, data.num_classes)
        self.labels.requires_grad_(True)
        self.optimizer = pipeline.make_optimizer([self.images, self.labels], self.config)
        self.member = pipeline.new_pool_member(self.config, data, self.generators["pool"])
        self.num_classes = data.num_classes
        self.flip = pipeline.resolved_flip(self.config, data.name)
        self.batch_size = min(self.config.batch_size, len(self.train))

    def _step(self):
        target = pipeline.draw_target_batch(self.train, self.batch_size, self.generators["data"])
        loss = pipeline.outer_loss(
            self.member.model, self.images, self.labels, target, self.num_classes, self.config,
            self.flip, self.generators["loss"],
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        pipeline.online_step(
            self.member, self.images, self.labels, self.config, self.generators["pool"]
        )

    def time_outer_step(self, backend, ipc):
        self._step()

    def peakmem_outer_step(self, backend, ipc):
        self._step()

    def track_support_finite(self, backend, ipc):
        """1.0 when one step leaves the learned images and labels finite."""
        self._step()
        return float(bool(torch.isfinite(self.images).all() and torch.isfinite(self.labels).all()))

    track_support_finite.unit = "finite"
