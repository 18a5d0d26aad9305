"""Rust vs torch backend vs naive autograd (partner search included everywhere), N = 1024."""

import torch

from .problems import forward_backward, krr_problem, loss, require_device, synchronize

N = 1024


class Backends:
    """CPU grid: implementation x dtype x C x d x M."""

    params = (
        ["rust", "torch", "naive"],
        ["float32", "float64"],
        [10, 100],
        [2048, 8192],
        [10, 100, 500, 2000],
    )
    param_names = ["impl", "dtype", "C", "d", "M"]
    timeout = 300

    def setup(self, impl, dtype, c, d, m):
        if dtype == "float64" and d == 8192 and m == 2000:
            raise NotImplementedError("float64 at M=2000, d=8192 takes minutes per repeat here")
        self.tensors = krr_problem(N, m, d, c, dtype)

    def time_forward(self, impl, dtype, c, d, m):
        with torch.no_grad():
            loss(impl, self.tensors)

    def time_forward_backward(self, impl, dtype, c, d, m):
        forward_backward(impl, self.tensors)

    def peakmem_forward_backward(self, impl, dtype, c, d, m):
        forward_backward(impl, self.tensors)


class BackendsCuda:
    """The torch backend vs naive autograd on a GPU (skipped without one), float32."""

    params = (["torch", "naive"], [10, 100], [2048, 8192], [10, 100, 500, 2000])
    param_names = ["impl", "C", "d", "M"]
    timeout = 300

    def setup(self, impl, c, d, m):
        require_device("cuda")
        self.tensors = krr_problem(N, m, d, c, "float32", "cuda")

    def time_forward(self, impl, c, d, m):
        with torch.no_grad():
            loss(impl, self.tensors)
        synchronize("cuda")

    def time_forward_backward(self, impl, c, d, m):
        forward_backward(impl, self.tensors)
        synchronize("cuda")

    def track_max_memory_allocated(self, impl, c, d, m):
        """Peak CUDA memory of one forward+backward, in bytes."""
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        forward_backward(impl, self.tensors)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    track_max_memory_allocated.unit = "bytes"
