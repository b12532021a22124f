"""Data sets. For now: the teacher–student task of the phase paper (Figure 2).

A teacher is a small mean-field network ``f*(z) = (1/k) Σ_l a*_l σ(w*_l·z)``; inputs are
standard Gaussian in ``R^d`` and labels ``y = f*(z) + noise·ε``, ``ε ~ N(0, 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import predict


@dataclass
class TeacherStudent:
    """Train/test split of a teacher–student task. ``teacher``: ``(k, d + 1)``."""

    teacher: torch.Tensor
    inputs: torch.Tensor
    targets: torch.Tensor
    test_inputs: torch.Tensor
    test_targets: torch.Tensor


def teacher_student(
    *,
    dim: int,
    teacher_width: int,
    n_train: int,
    n_test: int,
    label_noise: float = 0.0,
    teacher_scale: float = 2.0,
    activation: str = "tanh",
    generator: torch.Generator,
    dtype=torch.float64,
) -> TeacherStudent:
    """Draw a teacher (``a*_l = ±teacher_scale``, alternating; ``w*_l`` uniform on the sphere
    of radius ``teacher_scale``) and ``n_train + n_test`` labelled Gaussian inputs."""
    k = teacher_width
    w = torch.randn(k, dim, generator=generator, dtype=dtype)
    w = teacher_scale * w / w.norm(dim=1, keepdim=True)
    a = teacher_scale * torch.tensor([(-1.0) ** i for i in range(k)], dtype=dtype)
    teacher = torch.cat([a[:, None], w], dim=1)
    z = torch.randn(n_train + n_test, dim, generator=generator, dtype=dtype)
    y = predict(teacher, z, activation)
    y = y + label_noise * torch.randn(y.shape, generator=generator, dtype=dtype)
    return TeacherStudent(teacher, z[:n_train], y[:n_train], z[n_train:], y[n_train:])


def mean_field_init(width: int, dim: int, *, generator: torch.Generator, replicas: int | None = None,
                    dtype=torch.float64) -> torch.Tensor:
    """Student initialisation ``a ~ N(0, 1)``, ``w ~ N(0, I_d / d)`` (so ``w·z ~ N(0, 1)``):
    particles ``(width, d + 1)`` or ``(replicas, width, d + 1)``."""
    shape = (width,) if replicas is None else (replicas, width)
    a = torch.randn(*shape, 1, generator=generator, dtype=dtype)
    w = torch.randn(*shape, dim, generator=generator, dtype=dtype) / dim**0.5
    return torch.cat([a, w], dim=-1)
