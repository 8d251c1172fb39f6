"""Distilled Sentence Embedding (Barkan et al., AAAI 2020): the pieces of the student.

Groundwork for the chapter ``embeddings/distilled-sentence-embedding`` (not written yet). A siamese
student encodes each sentence on its own; a pair head scores the two embeddings; training mixes the
task loss with a squared error to a cross-encoder teacher's logits. Read against the official code
(``microsoft/Distilled-Sentence-Embedding``: ``models/feature_extractors.py``,
``models/dse_siamese_classifier.py``, ``train/trainers/dse_trainer.py``); the ``concat_top_mean``
pooler follows the paper card (the pooler source in ``pytorch_pretrained_bert/modeling.py`` was not
re-read for this module).

* :func:`concat_top_mean` -- eq. (1): mean over tokens ``t >= 1`` (``[CLS]`` excluded, ``[SEP]``
  kept, padding masked) of the concatenated states of the top ``k`` layers.
* :func:`pair_features` -- eq. (2): ``[u; v; u*v; |u-v|]`` (the "concat" head's input).
* :class:`PairHead` -- FC layers with ReLU between them on :func:`pair_features`.
* :func:`dse_loss` -- eq. (3): ``(1-a) L_task + a * mean_b ||z_b - t_b||^2`` (sum over logits).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


def concat_top_mean(hidden_states: Sequence[Tensor], attention_mask: Tensor, num_top: int = 4) -> Tensor:
    """Eq. (1): ``(B, k*D)`` sentence embeddings from the last ``num_top`` of ``hidden_states`` (each (B, N, D)).

    Position 0 (``[CLS]``) is excluded; every other position with ``attention_mask == 1`` is averaged.
    """
    if num_top < 1 or num_top > len(hidden_states):
        raise ValueError(f"num_top must be in 1..{len(hidden_states)}, got {num_top}")
    top = torch.cat(list(hidden_states[-num_top:]), dim=-1)  # (B, N, k*D)
    if attention_mask.shape != top.shape[:2]:
        raise ValueError(f"attention_mask must have shape {tuple(top.shape[:2])} (B, N), "
                         f"got {tuple(attention_mask.shape)}")
    m = attention_mask.to(top.dtype).clone()
    m[:, 0] = 0  # no [CLS]
    m = m.unsqueeze(-1)  # (B, N, 1)
    return (top * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, k*D)


def pair_features(u: Tensor, v: Tensor) -> Tensor:
    """Eq. (2): ``[u; v; u*v; |u-v|]`` -> (B, 4D) for ``u``, ``v`` of shape (B, D)."""
    if u.ndim != 2 or u.shape != v.shape:
        raise ValueError(f"u and v must both have shape (B, D), got {tuple(u.shape)} and {tuple(v.shape)}")
    return torch.cat([u, v, u * v, (u - v).abs()], dim=1)


class PairHead(nn.Module):
    """The "concat" siamese head: :func:`pair_features`, then FC layers (``fc_dims``) with ReLU between."""

    def __init__(self, dim: int, fc_dims: Sequence[int] = (512, 1)) -> None:
        super().__init__()
        if dim < 1 or not fc_dims or any(d < 1 for d in fc_dims):
            raise ValueError(f"dim and every fc_dims entry must be >= 1 (at least one layer), got {dim}, {fc_dims}")
        sizes = [4 * dim, *fc_dims]
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        """(B, D), (B, D) -> (B, K) logits."""
        x = pair_features(u, v)
        for layer in self.fc[:-1]:
            x = torch.relu(layer(x))
        return self.fc[-1](x)


def binary_teacher_target(teacher_logits: Tensor) -> Tensor:
    """For binary tasks the teacher's two logits become one: ``t = t_1 - t_0`` -> (B, 1)."""
    if teacher_logits.ndim != 2 or teacher_logits.shape[1] != 2:
        raise ValueError(f"teacher_logits must have shape (B, 2), got {tuple(teacher_logits.shape)}")
    return (teacher_logits[:, 1] - teacher_logits[:, 0]).unsqueeze(1)


def dse_loss(student: Tensor, labels: Tensor, teacher: Tensor, alpha: float = 0.5) -> Tensor:
    """Eq. (3) for a binary task: ``(1-alpha) BCE(student, labels) + alpha mean_b ||student_b - teacher_b||^2``.

    ``student`` and ``teacher`` are (B, 1) logits, ``labels`` (B,) in {0, 1}. ``alpha = 0`` is the
    siamese baseline without distillation.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(f"student and teacher must both be (B, K), "
                         f"got {tuple(student.shape)} and {tuple(teacher.shape)}")
    if labels.shape != student.shape[:1]:
        raise ValueError(f"labels must have shape ({student.shape[0]},), got {tuple(labels.shape)}")
    task = nn.functional.binary_cross_entropy_with_logits(student[:, 0], labels.to(student.dtype))
    if alpha == 0.0:
        return task
    distill = ((student - teacher) ** 2).sum(dim=1).mean()
    return (1 - alpha) * task + alpha * distill
