"""Memory of the nearest-partner search on a large batch: N = 60,000 targets, d = 512, f32.

The search used to hold the whole n_keep x n_keep similarity matrix (10 GB in Rust, 18 GB
asked by torch at this size); it now works in strips and panels. `track_extra_peak_rss_mb`
is the rise of the process's peak resident memory during one forward + backward, above what
the inputs already took.
"""

import resource

from .problems import forward_backward, krr_problem

N, M, D, C = 60_000, 100, 512, 10


class PartnerSearchMemory:
    params = (["rust", "torch"],)
    param_names = ["impl"]
    timeout = 900  # the torch backend's float64 panels take minutes on a small CPU

    def setup(self, impl):
        self.tensors = krr_problem(N, M, D, C, "float32")

    def track_extra_peak_rss_mb(self, impl):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        forward_backward(impl, self.tensors)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (after - before) / 1024  # ru_maxrss is in KiB on Linux

    track_extra_peak_rss_mb.unit = "MB"
