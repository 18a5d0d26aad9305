"""One outer step of `isa_distill.distill` (the `isa_distill.step.OuterStep` the loop calls) on
the CPU preset for digits (the CI dataset), eager and compiled."""

import torch

from isa_distill import distill as pipeline
from isa_distill.data import class_balanced_subset, load_dataset
from isa_distill.data.preprocess import Preprocessor
from isa_distill.evaluate import centred_one_hot
from isa_distill.presets import preset_config
from isa_distill.step import OuterStep


class DistillStep:
    params = (["rust", "torch"], [10, 50], [False, True])
    param_names = ["backend", "ipc", "compile"]
    timeout = 300

    def setup(self, backend, ipc, compile):
        data = load_dataset("digits")
        self.config = preset_config("digits", "cpu", ipc=ipc, backend=backend, compile=compile)
        self.generators = pipeline.make_generators(0)
        preprocessor = Preprocessor.fit(
            data.train.images, zca=pipeline.resolved_zca(self.config, data.name)
        )
        self.train = pipeline.preprocessed(data.train, preprocessor, "cpu")
        self.targets = centred_one_hot(self.train.labels, data.num_classes)
        init = class_balanced_subset(data.train, ipc, self.generators["data"])
        self.images = preprocessor.transform(init.images).requires_grad_(True)
        self.labels = pipeline.initial_support_labels(init.labels, data.num_classes)
        self.labels.requires_grad_(True)
        self.optimizer = pipeline.make_optimizer([self.images, self.labels], self.config)
        self.member = pipeline.new_pool_member(self.config, data, self.generators["pool"])
        flip = pipeline.resolved_flip(self.config, data.name)
        self.step = OuterStep(self.config.loss_settings(data.num_classes, flip),
                              compile=compile, mode=self.config.compile_mode)
        self.batch_size = min(self.config.batch_size, len(self.train))
        self.online_rows = min(len(self.images), self.config.online_batch)
        self._step()  # compiles when compile=True; the timings below are of warm steps

    def _step(self):
        cpu = torch.device("cpu")
        rows = pipeline.draw_rows(len(self.train), self.batch_size, self.generators["data"], cpu)
        own = pipeline.draw_rows(len(self.images), self.online_rows, self.generators["pool"], cpu)
        return self.step(self.member.model, self.member.optimizer, self.images, self.labels,
                         self.optimizer, self.train.images[rows], self.targets[rows], own)

    def time_outer_step(self, backend, ipc, compile):
        self._step()

    def peakmem_outer_step(self, backend, ipc, compile):
        self._step()

    def track_support_finite(self, backend, ipc, compile):
        """1.0 when one step leaves the learned images and labels finite."""
        self._step()
        return float(bool(torch.isfinite(self.images).all() and torch.isfinite(self.labels).all()))

    track_support_finite.unit = "finite"
