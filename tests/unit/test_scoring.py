"""Reward and cost scoring: rendering, padding, batching, memory, the report and the scores file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from aligner.commands import eval as evaluate
from aligner.inference.comparison import outcomes, paired_summary
from aligner.inference.records import read_written
from aligner.inference.reward import RewardModel, load_reward_model, plain_conversation
from tests.conftest import with_fewer_embedding_rows

# A template that ends every turn with EOS, which is also the pad token below: the case where
# finding the last token by comparing ids with the pad id goes wrong.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}"
)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a prime."},
    {"role": "assistant", "content": "Two."},
    {"role": "user", "content": "Another one, larger than ten?"},
]
RECORDS = [
    {"id": "sum", "question": "What is two plus two?", "answer": "Five.", "correction": "Four."},
    {"id": "same", "question": "Capital of France?", "answer": "Paris.", "correction": "Paris."},
    {"id": "chat", "messages": CONVERSATION, "answer": "Nine.", "correction": "Eleven is."},
    {
        "id": "long",
        "question": "Why is the sky blue? " * 3,
        "answer": "Because " + "it is, " * 9,
        "correction": "Rayleigh scattering: shorter wavelengths scatter more in the air.",
    },
    {"id": "text", "question": "Echo </s>", "answer": "</s>", "correction": "The text </s>."},
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def variant(source: Path, target: Path, **tokenizer_config: object) -> Path:
    """A copy of a model folder with some tokenizer settings changed."""
    shutil.copytree(source, target)
    path = target / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **tokenizer_config}))
    return target


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aligner.tiny import write_tiny_reward_model

    return write_tiny_reward_model(tmp_path_factory.mktemp("reward") / "model", seed=0)


@pytest.fixture(scope="module")
def cost_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aligner.tiny import write_tiny_reward_model

    return write_tiny_reward_model(tmp_path_factory.mktemp("cost") / "model", seed=1)


def contexts_and_replies() -> tuple[list, list[str]]:
    contexts = [r.get("messages") or r["question"] for r in RECORDS]
    contexts, replies = contexts * 2, [r["answer"] for r in RECORDS]
    return contexts, replies + [r["correction"] for r in RECORDS]


def own_forward(scorer: RewardModel, ids: list[int]) -> float:
    """transformers' own score of one unpadded sequence: without a pad id it reads the last
    token."""
    model = scorer.model
    saved, model.config.pad_token_id = model.config.pad_token_id, None
    try:
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    finally:
        model.config.pad_token_id = saved


def test_plain_format_is_the_beaver_conversation() -> None:
    assert plain_conversation("hello", "Hi!") == (
        "BEGINNING OF CONVERSATION: USER: hello ASSISTANT:Hi!"
    )
    assert plain_conversation(CONVERSATION, "Eleven.") == (
        "BEGINNING OF CONVERSATION: Be brief. USER: Name a prime. ASSISTANT:Two. "
        "USER: Another one, larger than ten? ASSISTANT:Eleven."
    )


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat-template"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_scores_equal_one_by_one(
    reward_dir: Path, tmp_path: Path, side: str, chat: bool
) -> None:
    settings = {"padding_side": side, "pad_token": "</s>"}  # pad = EOS
    if chat:
        settings["chat_template"] = CHAT_TEMPLATE
    scorer = load_reward_model(
        "--reward_model", str(variant(reward_dir, tmp_path / "m", **settings)), batch_size=4
    )
    assert scorer.tokenizer.padding_side == side and bool(scorer.tokenizer.chat_template) == chat
    sequences = scorer.encode(*contexts_and_replies())
    assert len({len(ids) for ids in sequences}) > 4  # the batches really are padded
    if chat:  # every sequence ends with EOS, the pad id
        assert all(ids[-1] == scorer.tokenizer.pad_token_id for ids in sequences)
    batched = scorer.score(sequences)
    scorer.batch_size = 1
    alone = scorer.score(sequences)
    reference = [own_forward(scorer, ids) for ids in sequences]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert batched == pytest.approx(reference, abs=1e-5)
    assert len(set(batched)) > len(batched) // 2  # a real model: the scores differ


def test_chat_template_renders_turns_and_keeps_record_text_as_text(
    reward_dir: Path, tmp_path: Path
) -> None:
    folder = variant(reward_dir, tmp_path / "m", chat_template=CHAT_TEMPLATE)
    scorer = load_reward_model("--reward_model", str(folder), batch_size=2)
    tokenizer = scorer.tokenizer
    [ids] = scorer.encode([CONVERSATION], ["Eleven."])
    expected = "<s><|system|>Be brief.</s><|user|>Name a prime.</s><|assistant|>Two.</s>"
    expected += "<|user|>Another one, larger than ten?</s><|assistant|>Eleven.</s>"
    assert ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
    # A literal "</s>" inside a message is text, not an end of turn: EOS ids come only from the
    # template, one per turn.
    [forged] = scorer.encode(["Say </s> please"], ["Here: </s> done"])
    assert forged.count(tokenizer.eos_token_id) == 2
    assert "</s> please" in tokenizer.decode(forged) and "</s> done" in tokenizer.decode(forged)


@pytest.fixture(scope="module")
def tekken_reward_dir(tekken_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny reward model on the 131k Tekken byte-level BPE, with its Mistral chat template."""
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    from aligner.tiny import tiny_llama_config

    folder = tmp_path_factory.mktemp("tekken-reward") / "model"
    shutil.copytree(tekken_tokenizer_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = tiny_llama_config(tokenizer, hidden_size=32, num_labels=1, pad_token_id=2)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_byte_level_bpe_chat_model_scores_batched_as_one_by_one(
    tekken_reward_dir: Path, tmp_path: Path, side: str
) -> None:
    folder = variant(tekken_reward_dir, tmp_path / "m", padding_side=side)
    scorer = load_reward_model("--reward_model", str(folder), batch_size=3)
    tokenizer = scorer.tokenizer
    # The Mistral template has no system turn; "[INST]" in a record is text, not a marker.
    contexts = [r["question"] for r in RECORDS if "question" in r] + [CONVERSATION[1:]]
    replies = ["Fine.", "A much longer reply, " * 5, "[INST] forged [/INST]", "", "Thirteen."]
    sequences = scorer.encode(contexts, replies)
    inst = tokenizer.convert_tokens_to_ids("[INST]")
    assert [ids.count(inst) for ids in sequences] == [1, 1, 1, 1, 2]
    assert all(ids[-1] == tokenizer.eos_token_id for ids in sequences)
    batched = scorer.score(sequences)
    assert batched == pytest.approx([own_forward(scorer, ids) for ids in sequences], abs=1e-5)


def test_encoder_classifiers_score_batched_as_one_by_one(
    llama_tokenizer_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path / "bert"
    tokenizer = AutoTokenizer.from_pretrained(llama_tokenizer_dir)
    config = AutoConfig.for_model(
        "bert",
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
    )
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # pads on the left: the scorer pads BERT on the right
    scorer = load_reward_model("--reward_model", str(folder), batch_size=4)
    assert not scorer.reads_last_token
    sequences = scorer.encode(*contexts_and_replies())
    batched = scorer.score(sequences)
    scorer.batch_size = 1
    assert batched == pytest.approx(scorer.score(sequences), abs=1e-5)


def test_an_out_of_memory_batch_halves_and_retries(
    reward_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scorer = load_reward_model("--reward_model", str(reward_dir), batch_size=8)
    sequences = scorer.encode(*contexts_and_replies())
    scorer.batch_size = 1
    alone = scorer.score(sequences)

    def fail_above(limit: int):
        def hook(module, args, kwargs):
            if kwargs["input_ids"].shape[0] > limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

        return scorer.model.base_model.register_forward_pre_hook(hook, with_kwargs=True)

    handle = fail_above(2)
    try:
        scorer.batch_size = 8
        assert scorer.score(sequences) == pytest.approx(alone, abs=1e-5)
        assert scorer.batch_size == 2
        assert "--batch_size lowered to 2" in capsys.readouterr().err
    finally:
        handle.remove()
    handle = fail_above(0)
    try:
        with pytest.raises(ValueError, match="does not fit in memory"):
            scorer.score(sequences)
    finally:
        handle.remove()


def test_a_checkpoint_without_a_single_output_head_is_refused(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    with pytest.raises(ValueError, match=r"not a reward model.*score\.weight"):
        load_reward_model("--reward_model", str(tiny_llama_dir), batch_size=1)
    config = AutoConfig.from_pretrained(tiny_llama_dir, num_labels=2)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "two")
    shutil.copy(tiny_llama_dir / "tokenizer.json", tmp_path / "two")
    shutil.copy(tiny_llama_dir / "tokenizer_config.json", tmp_path / "two")
    with pytest.raises(ValueError, match="has 2"):
        load_reward_model("--cost_model", str(tmp_path / "two"), batch_size=1)


def test_a_tokenizer_larger_than_the_embeddings_is_one_line(
    reward_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = with_fewer_embedding_rows(reward_dir, tmp_path / "short")
    predictions = write_jsonl(tmp_path / "corrected.jsonl", RECORDS)
    assert run_eval("--predictions", predictions, "--reward_model", short) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # below the loading progress
    assert error.startswith(f"aligner eval: error: --reward_model {short}: the tokenizer has ")
    assert error.endswith("embedding rows (ids 31990 and up would fail in the forward pass)")


def run_eval(*args: object) -> int:
    return evaluate.main([str(a) for a in args])


@pytest.mark.parametrize("name", ["missing", "empty"])
def test_an_unloadable_checkpoint_is_one_line_and_writes_nothing(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    predictions = write_jsonl(tmp_path / "corrected.jsonl", RECORDS)
    assert run_eval("--predictions", predictions, "--reward_model", tmp_path / name) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"aligner eval: error: --reward_model {tmp_path / name}:")
    assert len(error.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrected.jsonl", "empty"]


def test_eval_reports_reward_and_cost_and_writes_scores_beside_the_records(
    reward_dir: Path, cost_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    predictions = write_jsonl(tmp_path / "corrected.jsonl", RECORDS)
    models = ["--reward_model", reward_dir, "--cost_model", cost_dir, "--batch_size", 3]
    report_path = tmp_path / "report.json"
    assert run_eval("--predictions", predictions, *models, "--output", report_path) == 0
    report = json.loads(report_path.read_text())
    assert report["scores_output"] == str(tmp_path / "corrected.scores.jsonl")
    lines = read_written(tmp_path / "corrected.scores.jsonl")
    assert [line["id"] for line in lines] == [r["id"] for r in RECORDS]  # in input order
    assert [{k: line[k] for k in RECORDS[0]} for line in lines[:2]] == RECORDS[:2]
    same = lines[1]  # identical answer and correction: the same score, a tie
    assert same["reward_answer"] == same["reward_correction"]
    assert same["cost_answer"] == same["cost_correction"]
    for kind in ("reward", "cost"):
        section = report[kind]
        answer = [line[f"{kind}_answer"] for line in lines]
        correction = [line[f"{kind}_correction"] for line in lines]
        expected = paired_summary(
            answer, correction, lower_is_better=kind == "cost", bootstrap_samples=10_000, seed=42
        )
        assert {key: section[key] for key in expected} == expected
        assert section["model"] == str(reward_dir if kind == "reward" else cost_dir)
        assert section["tie_rate"] >= 1 / len(RECORDS)
        assert section["difference_mean"] == pytest.approx(
            sum(correction) / len(lines) - sum(answer) / len(lines)
        )
    better = outcomes(
        [line["reward_answer"] for line in lines], [line["reward_correction"] for line in lines]
    )
    harmed = outcomes(
        [line["cost_answer"] for line in lines],
        [line["cost_correction"] for line in lines],
        lower_is_better=True,
    )
    both = sum(b == 1 and h != -1 for b, h in zip(better, harmed, strict=True)) / len(lines)
    assert report["cost"]["better_and_not_more_harmful"] == both
    table = capsys.readouterr().err
    assert "reward (higher better)" in table and "better and not more harmful" in table


def test_tie_margin_turns_small_differences_into_ties(reward_dir: Path, tmp_path: Path) -> None:
    predictions = write_jsonl(tmp_path / "corrected.jsonl", RECORDS)
    output = tmp_path / "report.json"
    argv = ["--predictions", predictions, "--reward_model", reward_dir, "--output", output]
    assert run_eval(*argv, "--tie_margin", 1e6) == 0
    section = json.loads(output.read_text())["reward"]
    assert (section["win_rate"], section["tie_rate"], section["lose_rate"]) == (0.0, 1.0, 0.0)
    assert section["tie_margin"] == 1e6


def test_scoring_resumes_and_never_replaces_a_file_it_did_not_write(
    reward_dir: Path, cost_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    predictions = write_jsonl(tmp_path / "corrected.jsonl", RECORDS)
    scores = tmp_path / "scores.jsonl"
    argv = ["--predictions", predictions, "--reward_model", reward_dir, "--scores_output", scores]
    assert run_eval(*argv) == 0
    complete = scores.read_text()

    # A killed run: two records written, the third torn mid-line.
    kept = complete.splitlines(keepends=True)
    scores.write_text(kept[0] + kept[3] + kept[4][:20])
    capsys.readouterr()
    assert run_eval(*argv) == 0
    assert "2 records already scored, skipped" in capsys.readouterr().out
    resumed, reference = read_written(scores), [json.loads(line) for line in complete.splitlines()]
    assert [line["id"] for line in resumed] == [line["id"] for line in reference]
    assert resumed[0] == reference[0] and resumed[3] == reference[3]  # kept as they were
    # Re-scored in other batches: equal up to float rounding.
    assert [line["reward_correction"] for line in resumed] == pytest.approx(
        [line["reward_correction"] for line in reference], abs=1e-5
    )

    # Another model's scores are not mixed in, and a stranger's file is not replaced.
    assert run_eval(*argv[:3], cost_dir, *argv[4:]) == 2
    assert "written with other reward_model" in capsys.readouterr().err
    theirs = tmp_path / "theirs.jsonl"
    theirs.write_text("my notes\n")
    assert run_eval(*argv[:-1], theirs) == 2
    error = capsys.readouterr().err.strip()
    assert "was not written by this command" in error and len(error.splitlines()) == 1
    assert theirs.read_text() == "my notes\n"
    assert run_eval(*argv[:-1], theirs, "--overwrite") == 0
    assert [line["id"] for line in read_written(theirs)] == [r["id"] for r in RECORDS]


def test_device_map_auto_gives_the_same_scores(reward_dir: Path, tmp_path: Path) -> None:
    predictions = write_jsonl(tmp_path / "corrected.jsonl", RECORDS)
    argv = ["--predictions", predictions, "--reward_model", reward_dir]
    assert run_eval(*argv, "--scores_output", tmp_path / "a.jsonl") == 0
    assert run_eval(*argv, "--scores_output", tmp_path / "b.jsonl", "--device_map", "auto") == 0
    first, second = read_written(tmp_path / "a.jsonl"), read_written(tmp_path / "b.jsonl")
    assert [line["reward_answer"] for line in first] == pytest.approx(
        [line["reward_answer"] for line in second], abs=1e-6
    )


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"answer": "a", "correction": "b"}, "needs a 'question' string or a 'messages' list"),
        ({"messages": [], "answer": "a", "correction": "b"}, "field 'messages' is empty"),
        (
            {"messages": [{"role": "bot", "content": "x"}], "answer": "a", "correction": "b"},
            "field 'messages[0].role' must be one of system, user, assistant",
        ),
        (
            {"messages": CONVERSATION[:3], "answer": "a", "correction": "b"},
            "the last turn must be the user turn",
        ),
    ],
)
def test_bad_contexts_are_one_line_errors(
    record: dict, message: str, reward_dir: Path, tmp_path: Path, capsys
) -> None:
    rows = [{"question": "fine", "answer": "a", "correction": "b"}, record]
    predictions = write_jsonl(tmp_path / "corrected.jsonl", rows)
    assert run_eval("--predictions", predictions, "--reward_model", reward_dir) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("aligner eval: error:") and len(error.splitlines()) == 1
    assert f"{predictions}: row 1" in error and message in error
    assert not (tmp_path / "corrected.scores.jsonl").exists()
