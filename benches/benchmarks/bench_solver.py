"""Support size M from 10 to 20000 at d = 2048: dual vs primal vs auto (float32, N = 1024)."""

import torch

from isa_distill import isa_krr_loss

from .problems import krr_problem, require_device, synchronize

D = 2048


class SolverScaling:
    params = ([10, 100, 1000, 4000, 20000], ["dual", "primal", "auto"], ["cpu", "cuda"])
    param_names = ["M", "solver", "device"]
    timeout = 600

    def setup(self, m, solver, device):
        require_device(device)
        if device == "cpu" and solver == "dual" and m > 4000:
            raise NotImplementedError("an M x M factorization this large is minutes on CPU")
        self.device = device
        self.tensors = krr_problem(1024, m, D, 10, "float32", device)
        self.solver = solver

    def _loss(self):
        return isa_krr_loss(*self.tensors, solver=self.solver)  # default backend of the device

    def time_forward(self, m, solver, device):
        with torch.no_grad():
            self._loss()
        synchronize(device)

    def track_finite(self, m, solver, device):
        """1.0 when the float32 loss is finite (rank-deficient K when M > d must not give NaN)."""
        with torch.no_grad():
            return float(torch.isfinite(self._loss()).item())

    track_finite.unit = "finite"
