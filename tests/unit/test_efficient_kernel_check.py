"""The first-use check that guards CUDA fp32 attention on the memory-efficient kernel.

No GPU here, so the kernel calls are replaced by the math path (exact, or perturbed, or failing):
the check must accept the exact one and fall back, with a warning, on the others.
"""

import pytest
import torch

import longdraft.attention.kernels as kernels


def _install(monkeypatch, forward, backward):
    monkeypatch.setattr(kernels, "_efficient_forward", forward)
    monkeypatch.setattr(kernels, "_efficient_backward", backward)


def test_a_kernel_that_matches_math_is_used(monkeypatch):
    _install(monkeypatch, kernels._math_forward, kernels._math_backward)
    assert kernels._efficient_matches_math(torch.device("cpu"), 16)


def test_a_kernel_whose_gradients_differ_falls_back_with_the_deviation(monkeypatch):
    def off_by_a_bit(*args):
        dq, dk, dv = kernels._math_backward(*args)
        return dq * 1.01, dk, dv

    _install(monkeypatch, kernels._math_forward, off_by_a_bit)
    with pytest.warns(UserWarning, match=r"differs from the math path by \d\.\d\de-0\d"):
        assert not kernels._efficient_matches_math(torch.device("cpu"), 16)


def test_a_kernel_that_fails_falls_back(monkeypatch):
    def unsupported(*args):
        raise RuntimeError("No available kernel")

    _install(monkeypatch, unsupported, kernels._math_backward)
    with pytest.warns(UserWarning, match="No available kernel"):
        assert not kernels._efficient_matches_math(torch.device("cpu"), 16)


def test_cpu_never_takes_the_cuda_kernel():
    assert not kernels._use_cuda_efficient(torch.zeros(1, 1, 2, 4))
