"""The test hooks: read from the environment for one rank, each firing at its step only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aligner.training import hooks
from aligner.training.hooks import InjectedFault, TestHooks


def test_fault_steps_parse_rank_and_steps() -> None:
    environ = {hooks.FAULT_INF_GRAD_ENV: "1:3,4"}
    assert hooks.fault_steps(hooks.FAULT_INF_GRAD_ENV, 1, environ) == {3, 4}
    assert hooks.fault_steps(hooks.FAULT_INF_GRAD_ENV, 0, environ) == frozenset()
    assert hooks.fault_steps(hooks.FAULT_KILL_ENV, 1, environ) == frozenset()
    with pytest.raises(ValueError, match="RANK:STEP"):
        hooks.fault_steps(hooks.FAULT_KILL_ENV, 0, {hooks.FAULT_KILL_ENV: "step 3"})


def test_the_environment_sets_the_hooks_of_one_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {
        "ALIGNER_FAULT_RANK": "1",
        "ALIGNER_FAULT_STEP": "2",
        "ALIGNER_FAULT_KILL": "1:7",
        "ALIGNER_FAULT_SAVE": "1:6",
        "ALIGNER_FAULT_INF_GRAD": "1:2,5",
        "ALIGNER_FAULT_NAN_WEIGHT": "0:3",
        "ALIGNER_PROBE_LOGITS": "/tmp/probe.pt",
    }
    assert TestHooks.from_env(1, environ) == TestHooks(
        rank=1,
        raise_after=2,
        kill_after=frozenset({7}),
        kill_while_saving=frozenset({6}),
        inf_gradient=frozenset({2, 5}),
        probe_logits=Path("/tmp/probe.pt"),
    )
    assert TestHooks.from_env(0, environ) == TestHooks(
        rank=0, nan_weight_after=frozenset({3}), probe_logits=Path("/tmp/probe.pt")
    )
    assert TestHooks.from_env(1, {"ALIGNER_FAULT_RANK": "1"}).raise_after == 0
    for name in environ:
        monkeypatch.delenv(name, raising=False)
    assert TestHooks.from_env(1) == TestHooks(rank=1)  # a real run: nothing fires
    monkeypatch.setenv("ALIGNER_FAULT_KILL", "1:4")
    assert TestHooks.from_env(1).kill_after == {4}


def test_the_raise_comes_after_that_many_steps_on_that_rank_only() -> None:
    fault = TestHooks(rank=1, raise_after=2)
    fault.before_step(0)
    fault.before_step(1)
    with pytest.raises(InjectedFault, match="rank 1: injected fault at step 2"):
        fault.before_step(2)
    TestHooks(rank=0).before_step(0)  # no fault set: never raises


def test_an_infinite_gradient_once_in_each_chosen_step() -> None:
    model = torch.nn.Linear(3, 2)
    fault = TestHooks(inf_gradient=frozenset({2}))
    fault.corrupt_gradients(model)

    def first_gradients(done: int, micro_batches: int = 2) -> list[bool]:
        fault.before_step(done)
        finite = []
        for _ in range(micro_batches):
            model.zero_grad()
            model(torch.ones(1, 3)).sum().backward()
            finite.append(bool(torch.isfinite(model.weight.grad).all()))
        assert torch.isfinite(model.bias.grad).all()  # only the first weight is hit
        return finite

    assert first_gradients(0) == [True, True]  # step 1
    assert first_gradients(1) == [False, True]  # step 2: its first micro-batch only
    assert first_gradients(2) == [True, True]  # step 3


def test_a_nan_weight_after_the_chosen_step() -> None:
    model = torch.nn.Linear(3, 2)
    fault = TestHooks(nan_weight_after=frozenset({3}))
    fault.after_update(2, model)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    fault.after_update(3, model)
    assert torch.isnan(model.weight.view(-1)[0]) and torch.isfinite(model.bias).all()


def test_kills_fire_at_their_own_step_and_point(monkeypatch: pytest.MonkeyPatch) -> None:
    killed: list[str] = []
    fault = TestHooks(kill_after=frozenset({4}), kill_while_saving=frozenset({6}))
    for step in (3, 4, 6):
        monkeypatch.setattr(hooks, "kill_self", lambda step=step: killed.append(f"step {step}"))
        fault.after_step(step)
        monkeypatch.setattr(hooks, "kill_self", lambda step=step: killed.append(f"save {step}"))
        fault.during_save(step)
    assert killed == ["step 4", "save 6"]


@pytest.mark.parametrize("rank", [0, 1])
def test_the_probe_runs_on_every_rank_and_rank_0_saves_it(tmp_path: Path, rank: int) -> None:
    path = tmp_path / "probe.pt"
    calls: list[int] = []

    def logits() -> dict[str, torch.Tensor]:
        calls.append(rank)
        return {"logits": torch.ones(2, 3)}

    TestHooks(rank=rank).after_final_save(logits)
    assert calls == []  # no probe asked for: no forward pass
    TestHooks(rank=rank, probe_logits=path).after_final_save(logits)
    assert calls == [rank]
    if rank == 0:
        assert torch.equal(torch.load(path, weights_only=True)["logits"], torch.ones(2, 3))
    else:
        assert not path.exists()
