"""The GPU check's parts that need no GPU: FLOPs and rates, the model it writes, the report,
timeouts and the time budget."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.assets import parameter_counts, write_bench_model
from benchmarks.processes import offline_env, run_logged
from benchmarks.report import render_markdown
from benchmarks.train_figures import ModelCounts, step_flops, train_figures

COUNTS = ModelCounts(
    parameters=1000, embedding=100, lm_head=100, tied=False, layers=2, hidden_size=8
)


def test_step_flops_count_6n_the_head_and_each_samples_attention() -> None:
    lengths = [3, 5]  # 8 tokens; sum of squares 34
    attention = 12 * 2 * 8 * 34
    assert COUNTS.body == 800  # neither the embedding lookup nor the head
    assert step_flops(COUNTS, lengths) == 6 * (800 * 8 + 100 * 8) + attention
    assert step_flops(COUNTS, lengths, head_tokens=4) == 6 * (800 * 8 + 100 * 4) + attention
    assert step_flops(COUNTS, lengths, frozen=True) == 4 * (800 * 8 + 100 * 8) + attention
    tied = ModelCounts(900, 100, 100, tied=True, layers=2, hidden_size=8)
    assert tied.body == COUNTS.body  # a tied head is counted once, as the head


def _metrics() -> list[dict]:
    """Three logged steps (tokens = tokens_per_s x step_time) and the final peak memory row."""
    rows = []
    for step, (tokens, seconds, padding, targets) in enumerate(
        [(10, 5.0, 0.5, 4), (8, 2.0, 0.2, 3), (12, 3.0, 0.0, 5)], start=1
    ):
        rows.append(
            {
                "step": step,
                "time": 100.0 + 5 * step,
                "train_loss": 3.0 - step / 10,
                "tokens_per_s": tokens / seconds,
                "step_time": seconds,
                "padding_share": padding,
                "target_tokens": targets,
            }
        )
    rows.append({"step": 3, "time": 116.0, "peak_memory_mib": [1024.0, 2048.0]})
    return rows


def test_train_figures_time_the_steps_after_warm_up() -> None:
    batches = [[4, 6], [3, 5], [2, 10]]
    figures = train_figures(
        _metrics(), batches, COUNTS, warmup_steps=1, world_size=2, peak_tflops=1e-9
    )
    gpu_seconds = (115.0 - 105.0) * 2  # from the end of step 1 to the end of step 3, 2 GPUs
    assert figures["timed_steps"] == 2
    assert figures["tokens_per_s_per_gpu"] == pytest.approx(20 / gpu_seconds, abs=0.1)
    assert figures["target_tokens_per_s_per_gpu"] == pytest.approx(8 / gpu_seconds, abs=0.1)
    assert figures["padding_share"] == pytest.approx(1 - 20 / (8 / 0.8 + 12), abs=1e-4)
    flops = step_flops(COUNTS, [3, 5]) + step_flops(COUNTS, [2, 10])
    assert figures["mfu"] == pytest.approx(flops / gpu_seconds / 1e3, rel=1e-3)
    at_targets = step_flops(COUNTS, [3, 5], 3) + step_flops(COUNTS, [2, 10], 5)
    assert figures["mfu_head_at_targets"] == pytest.approx(at_targets / gpu_seconds / 1e3, rel=1e-3)
    assert figures["peak_memory_gib"] == 2.0  # the larger rank's
    assert (figures["loss_first"], figures["loss_last"]) == (2.9, 2.7)


def test_train_figures_refuse_a_plan_the_run_did_not_train() -> None:
    with pytest.raises(ValueError, match="step 2: the run trained 8 tokens"):
        train_figures(_metrics(), [[10], [7], [12]], COUNTS, warmup_steps=1, world_size=1)
    with pytest.raises(ValueError, match="warm-up"):
        train_figures(_metrics(), [[10], [8], [12]], COUNTS, warmup_steps=3, world_size=1)


def test_bench_model_never_stops_early_under_greedy_decoding(
    llama_tokenizer_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from aligner.tokenizer import load_tokenizer

    directory = tmp_path / "model"
    shutil.copytree(llama_tokenizer_dir, directory)
    shape = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}
    counts = write_bench_model(directory, shape, dtype=torch.float32, device="cpu")
    tokenizer = load_tokenizer(str(directory))
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    assert counts == parameter_counts(model)
    assert counts["embedding"] == counts["lm_head"] == 32 * len(tokenizer)
    assert not counts["tied"]
    assert json.loads((directory / "parameter_counts.json").read_text()) == counts

    prompts = ["Fix this answer:", "Paris is in Spain."]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits  # (B, L, V)
    eos = tokenizer.eos_token_id
    assert (logits[..., eos] == 0).all()
    assert (logits.max(dim=-1).values > 0).all()  # so greedy decoding never picks EOS
    output = model.generate(**inputs, max_new_tokens=24, do_sample=False, eos_token_id=eos)
    new = output[:, inputs["input_ids"].shape[1] :]
    assert new.shape[1] == 24 and not (new == eos).any()


def test_report_has_a_row_for_every_result() -> None:
    rows = [
        {"name": "zero2", "status": "ok", "tokens_per_s_per_gpu": 41234.5, "mfu": 0.4123},
        {"name": "zero3", "status": "timed out after 150s"},
        {"name": "correct-b8", "status": "ok", "batch_size": 8, "generated_tokens_per_s": 812.0},
    ]
    summary = {
        "dtype": "bfloat16",
        "records": 10,
        "max_length": 64,
        "ranks": 1,
        "micro_batch": 2,
        "accumulation": 2,
        "warmup_steps": 1,
        "timed_steps": 2,
        "peak_tflops": 989.0,
        "max_new_tokens": 256,
    }
    text = render_markdown(rows, {}, summary)
    lines = text.splitlines()
    assert any(line.startswith("| zero2 | 41,234 |") and "41.2%" in line for line in lines)
    assert any(line.startswith("| zero3 |") and "timed out after 150s" in line for line in lines)
    assert any(line.startswith("| correct-b8 | 8 |") and "812" in line for line in lines)


def test_a_timed_out_part_is_ended_with_everything_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    command = ["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]
    started = time.monotonic()
    finished = run_logged(command, offline_env(), tmp_path / "part.log", timeout_s=1)
    assert finished.timed_out and time.monotonic() - started < 15
    stat = Path(f"/proc/{int(pid_file.read_text())}/stat")
    deadline = time.monotonic() + 5
    while stat.exists() and stat.read_text().split()[2] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not stat.exists() or stat.read_text().split()[2] == "Z"  # gone, or dead and unreaped


def test_a_check_without_time_lists_every_row_as_skipped(tmp_path: Path) -> None:
    output = tmp_path / "out"
    code = gpu_check.main(["--cpu_smoke", "--budget_s", "0", "--output", str(output)])
    assert code == 1
    rows = json.loads((output / "gpu-check.json").read_text())
    assert [row["name"] for row in rows] == [*gpu_check.TRAIN_ROWS, "correct-b2", "correct-b4"]
    assert {row["status"] for row in rows} == {"skipped: no time left in the budget"}
    assert "| correct-b4 |" in (output / "gpu-check.md").read_text()


def test_a_check_never_writes_into_a_folder_it_did_not_make(tmp_path: Path) -> None:
    theirs = tmp_path / "out" / "metrics.jsonl"
    theirs.parent.mkdir()
    theirs.write_text("a training run's own metrics\n")
    code = gpu_check.main(["--cpu_smoke", "--budget_s", "0", "--output", str(theirs.parent)])
    assert code == 2 and theirs.read_text() == "a training run's own metrics\n"
    assert not (theirs.parent / "gpu-check.json").exists()
    work = tmp_path / "work"
    (work / "model").mkdir(parents=True)
    arguments = ["--cpu_smoke", "--budget_s", "0", "--output", str(tmp_path / "new")]
    assert gpu_check.main([*arguments, "--work", str(work)]) == 2
    # An earlier check's results and working folder are its own to replace.
    assert gpu_check.main(arguments) == 1
    (work / gpu_check.WORK_MARKER).touch()
    assert gpu_check.main([*arguments, "--work", str(work)]) == 1
