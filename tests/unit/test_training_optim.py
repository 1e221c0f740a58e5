"""The learning-rate schedule: warm-up steps rounded down, as in the original toolkit."""

from __future__ import annotations

import pytest
import torch

from aligner.training.optim import build_scheduler, warmup_steps


@pytest.mark.parametrize(
    ("ratio", "total", "steps"), [(0.03, 1, 0), (0.03, 100, 3), (0.15, 10, 1), (0.0, 50, 0)]
)
def test_warmup_steps_round_down(ratio: float, total: int, steps: int) -> None:
    assert warmup_steps(ratio, total) == steps


def test_a_one_step_run_trains_at_the_full_learning_rate() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    build_scheduler(optimizer, "cosine", total_steps=1, warmup_ratio=0.03)
    # The first update uses this learning rate; rounding warm-up up would make it 0.
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
