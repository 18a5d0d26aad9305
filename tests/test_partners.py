"""One nearest-partner rule for both backends, for any finite float32 input (property tests).

The rule: float64 cosine similarities of the rows scaled to unit length, ties (within 1e-12)
to the lowest index, zero vectors similar to nothing. The oracle computes it pair by pair from
the float32 values; the backends compute it in blocks (Rust: a float32 shortlist certified by
an error bound, rescored in float64; torch: float64 panels).
"""

from __future__ import annotations

import pytest
import torch
from conftest import BACKENDS
from hypothesis import given, settings
from hypothesis import strategies as st

import isa_distill._torch_backend as torch_backend
from isa_distill import isa_krr_loss
from isa_distill.reference import reference_partners

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


def targets_with_near_duplicates(n, d, seed, scale, duplicates):
    """float32 features: random rows, some copies of row 0 perturbed by ~float32 rounding,
    some exact copies and one zero row; every value scaled by ``scale``."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=g, dtype=torch.float64)
    for k in range(1, 1 + duplicates):
        noise = 1 + 1e-7 * torch.randn(d, generator=g, dtype=torch.float64)
        features[k] = features[0] * (noise if k % 2 else 1.0)
    features[n - 1] = 0.0
    return (features * scale).to(torch.float32)


def partners_of(features, backend):
    n, c = features.shape[0], 3
    labels = torch.nn.functional.one_hot(torch.arange(n) % c, c).float() - 1 / c
    support = torch.eye(4, features.shape[1])  # any well-posed support set: partners ignore it
    # Deferred checks: at the largest scales the plain losses overflow float32, which the
    # status reports; the partners do not depend on them.
    _, info = isa_krr_loss(support, labels[:4], features, labels, discard=0.0, reg=1e-2,
                           backend=backend, return_info=True, checks="deferred")
    return info.partner.tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(
    n=st.integers(6, 40),
    d=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1e-23, 1e-6, 1.0, 1e20, 1e30]),
    duplicates=st.integers(0, 4),
)
def test_partners_follow_the_rule_at_any_scale(backend, n, d, seed, scale, duplicates):
    features = targets_with_near_duplicates(n, d, seed, scale, min(duplicates, n - 2))
    expected = reference_partners(features, list(range(n)), "nearest", None)
    assert partners_of(features, backend) == expected


def test_both_backends_agree_on_float32_near_duplicates():
    pytest.importorskip("isa_distill._core")
    for seed in range(30):
        features = targets_with_near_duplicates(24, 16, seed, 1.0, duplicates=6)
        assert partners_of(features, "rust") == partners_of(features, "torch"), seed


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_float32_features_get_the_float64_partners(backend):
    # The probe's case: features x 1e-23 used to lose 24 of 26 partners in float32.
    features = targets_with_near_duplicates(26, 10, 7, 1e-23, duplicates=0)
    expected = reference_partners(features, list(range(26)), "nearest", None)
    assert partners_of(features, backend) == expected


def test_torch_partner_search_holds_one_panel_at_a_time(monkeypatch):
    features = targets_with_near_duplicates(50, 6, 3, 1.0, duplicates=2)
    kept = torch.arange(50)
    whole = torch_backend.nearest_partners(features, kept)
    monkeypatch.setattr(torch_backend, "PARTNER_PANEL_ELEMENTS", 7 * 50)  # 7 rows per panel
    assert torch.equal(torch_backend.nearest_partners(features, kept), whole)
