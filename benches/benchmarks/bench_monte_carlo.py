"""Closed-form ISA term vs the Monte-Carlo mixup integral it replaces (N=1024, M=100, d=2048)."""

import torch

from .problems import forward_backward, krr_problem, loss, require_device, synchronize

METHODS = ["closed-form", "mc-1", "mc-8", "mc-64", "mc-512"]
ERROR_SEEDS = 5


class IsaVsMonteCarlo:
    """Closed form (default backend of the device) vs Monte-Carlo with S samples, float64."""

    params = (METHODS, ["cpu", "cuda"])
    param_names = ["method", "device"]
    timeout = 600

    def setup(self, method, device):
        require_device(device)
        if method == "mc-512" and device == "cpu":
            raise NotImplementedError("S=512 fwd+bwd keeps ~6 GB of autograd graph on CPU")
        self.device = device
        self.tensors = krr_problem(1024, 100, 2048, 10, "float64", device)
        self.impl = ("rust" if device == "cpu" else "torch") if method == "closed-form" else method

    def time_forward(self, method, device):
        with torch.no_grad():
            loss(self.impl, self.tensors)
        synchronize(device)

    def time_forward_backward(self, method, device):
        forward_backward(self.impl, self.tensors)
        synchronize(device)

    def track_relative_error(self, method, device):
        """Mean |estimate - closed form| / closed form over 5 seeds (0 for the closed form)."""
        if method == "closed-form":
            return 0.0
        with torch.no_grad():
            exact = float(loss("torch", self.tensors))
            errors = [abs(float(loss(self.impl, self.tensors, seed)) - exact) / exact
                      for seed in range(ERROR_SEEDS)]
        return sum(errors) / len(errors)

    track_relative_error.unit = "relative error"
