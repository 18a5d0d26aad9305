"""The ISA kernel loss on CPU: random features, both backends, loss and gradient norms.

Run with ``python examples/loss_example.py`` once isa-distill is installed (``make build-dev``
in the source tree, or ``pip install`` of the wheel).
"""

import torch

from isa_distill import isa_krr_loss

torch.manual_seed(0)
M, N, d, C = 20, 256, 64, 10  # support size, target batch, feature width, classes

support_features = torch.randn(M, d)
support_labels = torch.randn(M, C) / C**0.5
target_features = torch.randn(N, d)
# Centred one-hot targets: 1 - 1/C on the true class, -1/C elsewhere.
target_labels = torch.nn.functional.one_hot(torch.randint(0, C, (N,)), C).float() - 1.0 / C

for backend in ("rust", "torch"):
    f_s = support_features.clone().requires_grad_(True)
    y_s = support_labels.clone().requires_grad_(True)
    loss, info = isa_krr_loss(
        f_s, y_s, target_features, target_labels,
        epsilon=1.0, discard=0.2, partner="nearest", backend=backend, return_info=True,
    )  # fmt: skip
    loss.backward()
    print(
        f"{backend:>5}: loss={loss.item():.6f}  kept={info.kept.numel()}/{N}  "
        f"|dL/dF_S|={f_s.grad.norm():.6f}  |dL/dY_S|={y_s.grad.norm():.6f}"
    )
