"""``aligner correct``: template plumbing, batched generation, resume, rounds, preference pairs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aligner.commands import correct as correct_command
from aligner.datasets.encode import Request, SampleEncoder
from aligner.inference import correcting as correct
from aligner.inference.generate import GenerationOptions, generate, left_pad
from aligner.inference.preference import write_preferences
from aligner.inference.records import OutputError, read_written
from aligner.prompts import PromptTemplate, get_template
from aligner.tokenizer import load_tokenizer
from tests.conftest import (
    CHAT_MEMORISED,
    memorise,
    with_corrupt_bin_weights,
    with_fewer_embedding_rows,
)
from tests.standins import completions_app, serving

# A template unlike every preset, so that only a checkpoint's own saved template renders it.
TERSE = PromptTemplate(
    name="terse",
    begin="",
    user="<<{input}>>",
    assistant=" => ",
    instruction="Q: {question} A: {answer}",
)
MEMORISED = [
    {"question": "What is two plus two?", "answer": "Five.", "correction": "Four."},
    {"question": "Name the capital of France.", "answer": "Lyon.", "correction": "Paris it is."},
    {"question": "Is the sky green?", "answer": "Yes, always.", "correction": "No, it is blue."},
]
QUESTIONS = [
    {"question": "Hi", "answer": "Hello"},
    {"question": "What is the boiling point of water at sea level?", "answer": "About 50 C."},
    {"question": "Why?", "answer": "Because " + "it is so, " * 12},
    {"question": "Translate 'chat' to English.", "answer": "Dog."},
    {"question": "Say nothing.", "answer": ""},
    {"question": "Count to three.", "answer": "1, 2, 4"},
    {"question": "Spell cat.", "answer": "k-a-t"},
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def run_correct(*args: str | Path) -> int:
    return correct_command.main([str(a) for a in args])


@pytest.fixture(scope="module")
def memorised_checkpoint(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama trained, through the data pipeline's encoder, to give MEMORISED's
    corrections under the TERSE template, saved with that template."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(tiny_llama_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    directory = tmp_path_factory.mktemp("memorised") / "checkpoint"
    return memorise(model, tokenizer, TERSE, MEMORISED, directory)


def test_chat_corrections_end_at_the_end_of_turn(chat_checkpoint: Path, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", CHAT_MEMORISED)
    args = ["--model_name_or_path", chat_checkpoint, "--input", source, "--max_new_tokens", 40]
    assert run_correct(*args, "--output", tmp_path / "out.jsonl") == 0
    written = read_written(tmp_path / "out.jsonl")
    # Exactly the corrections: the model stopped at the template's end of turn, wrote no marker,
    # and a "</s>" in a correction came back as text.
    assert [r["correction"] for r in written] == [r["correction"] for r in CHAT_MEMORISED]
    assert json.loads((chat_checkpoint / "prompt_template.json").read_text())["kind"] == "chat"


def test_correct_renders_the_checkpoint_template(memorised_checkpoint: Path, tmp_path: Path):
    source = write_jsonl(tmp_path / "in.jsonl", MEMORISED)
    args = ["--model_name_or_path", memorised_checkpoint, "--input", source]
    assert run_correct(*args, "--output", tmp_path / "own.jsonl", "--max_new_tokens", 16) == 0
    own = read_written(tmp_path / "own.jsonl")
    assert [r["correction"] for r in own] == [r["correction"] for r in MEMORISED]

    # The same model under another template has not learned these corrections.
    other = ["--output", tmp_path / "other.jsonl", "--template", "correction"]
    assert run_correct(*args, *other, "--max_new_tokens", 16) == 0
    other_records = read_written(tmp_path / "other.jsonl")
    assert all(
        r["correction"] != m["correction"] for r, m in zip(other_records, MEMORISED, strict=True)
    )


def prompt_ids(encoder: SampleEncoder, records: list[dict]) -> list[list[int]]:
    return [encoder.prompt_ids(Request.from_record(record)) for record in records]


def test_prompts_are_tokenized_as_in_training(any_tokenizer) -> None:
    columns = {key: [r[key] for r in MEMORISED] for key in MEMORISED[0]}
    encoder = SampleEncoder(any_tokenizer, get_template(), max_length=512)
    encoded = encoder(columns)
    pairs = zip(encoded["input_ids"], encoded["prompt_length"], strict=True)
    trained = [ids[:n] for ids, n in pairs]
    assert prompt_ids(encoder, MEMORISED) == trained


def test_prompts_never_end_with_an_eos_the_tokenizer_appends(bpe_tokenizer_dir: Path) -> None:
    from tokenizers import processors

    tokenizer = load_tokenizer(str(bpe_tokenizer_dir))
    eos = tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, tokenizer.eos_token_id)]
    )
    assert tokenizer("hello")["input_ids"][-1] == tokenizer.eos_token_id
    prompt = get_template().render("hello", "world")
    plain = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    encoder = SampleEncoder(tokenizer, get_template(), max_length=512)
    assert prompt_ids(encoder, [{"question": "hello", "answer": "world"}]) == [plain]


def test_left_pad_masks_by_length_even_where_a_prompt_holds_the_pad_id() -> None:
    input_ids, attention_mask = left_pad([[5, 0, 7], [9]], pad_token_id=0)
    assert input_ids.tolist() == [[5, 0, 7], [0, 0, 9]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_batched_generation_matches_one_by_one(tiny_checkpoint_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(tiny_checkpoint_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint_dir).eval()
    encoder = SampleEncoder(tokenizer, get_template(), max_length=512)
    prompts = prompt_ids(encoder, QUESTIONS)
    assert len({len(p) for p in prompts}) == len(prompts)  # each row has its own padding
    options, stops = GenerationOptions(max_new_tokens=12), encoder.stop_token_ids()
    batched = generate(model, tokenizer, prompts, options, stops)
    alone = [generate(model, tokenizer, [prompt], options, stops)[0] for prompt in prompts]
    assert batched == alone
    assert all(batched)


def test_greedy_config_carries_no_sampling_settings() -> None:
    greedy = GenerationOptions(max_new_tokens=7, temperature=0.5).generation_config(0, [2])
    assert (greedy.do_sample, greedy.max_new_tokens, greedy.temperature) == (False, 7, None)
    assert (greedy.pad_token_id, greedy.eos_token_id) == (0, [2])
    sampled = GenerationOptions(do_sample=True, temperature=0.5, top_k=0).generation_config(0, [2])
    assert (sampled.do_sample, sampled.temperature, sampled.top_k, sampled.top_p) == (
        True,
        0.5,
        0,
        None,
    )


def test_sampling_is_reproducible_with_a_seed(tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", QUESTIONS[:3])
    args = ["--model_name_or_path", tiny_checkpoint_dir, "--input", source, "--do_sample"]
    args += ["--max_new_tokens", 6, "--top_k", 0]
    runs = {}
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        output = tmp_path / f"{name}.jsonl"
        assert run_correct(*args, "--seed", seed, "--output", output) == 0
        runs[name] = [r["correction"] for r in read_written(output)]
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_output_keeps_input_fields_and_ids(tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    records = [{"id": f"q{i}", "source": "forum", **r} for i, r in enumerate(QUESTIONS[:3])]
    with_ids = write_jsonl(tmp_path / "ids.jsonl", records)
    common = ["--model_name_or_path", tiny_checkpoint_dir, "--max_new_tokens", 3]
    assert run_correct(*common, "--input", with_ids, "--output", tmp_path / "a.jsonl") == 0
    written = read_written(tmp_path / "a.jsonl")
    assert [{k: v for k, v in r.items() if k != "correction"} for r in written] == records
    assert all(isinstance(r["correction"], str) for r in written)

    # Without ids, each record's index in the input is its id; a given correction is kept
    # as the reference.
    given = [{**QUESTIONS[0], "correction": "Hello!"}, QUESTIONS[1]]
    no_ids = write_jsonl(tmp_path / "no-ids.jsonl", given)
    assert run_correct(*common, "--input", no_ids, "--output", tmp_path / "b.jsonl") == 0
    written = read_written(tmp_path / "b.jsonl")
    assert [r["id"] for r in written] == [0, 1]
    assert written[0]["reference_correction"] == "Hello!"
    assert written[0]["question"] == QUESTIONS[0]["question"]


def test_interrupted_run_resumed_writes_each_record_once(
    tiny_checkpoint_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", QUESTIONS)
    common = ["--model_name_or_path", tiny_checkpoint_dir, "--input", source, "--max_new_tokens", 4]
    common += ["--batch_size", 2]
    assert run_correct(*common, "--output", tmp_path / "reference.jsonl") == 0
    reference = read_written(tmp_path / "reference.jsonl")

    calls = []

    def crash_on_third_batch(*args, **kwargs):
        calls.append(len(args[2]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return generate(*args, **kwargs)

    output = tmp_path / "out.jsonl"
    monkeypatch.setattr(correct, "generate", crash_on_third_batch)
    assert run_correct(*common, "--output", output) == 130
    assert len(read_written(output)) == 4
    # A crash in the middle of a write leaves a torn last line.
    with output.open("a", encoding="utf-8") as handle:
        handle.write('{"id": 6, "question": "Spell')

    calls.clear()
    monkeypatch.setattr(correct, "generate", lambda *a, **k: calls.append(1) or generate(*a, **k))
    assert run_correct(*common, "--output", output) == 0
    assert len(calls) == 2  # the three records left, in batches of two
    resumed = read_written(output)
    assert [r["id"] for r in resumed] == list(range(len(QUESTIONS)))
    assert resumed == reference

    calls.clear()
    assert run_correct(*common, "--output", output) == 0
    assert calls == []  # nothing left to do
    assert read_written(output) == reference


def test_resuming_with_other_settings_is_refused(
    tiny_checkpoint_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", QUESTIONS[:2])
    args = ["--model_name_or_path", tiny_checkpoint_dir, "--input", source]
    args += ["--output", tmp_path / "out.jsonl"]
    assert run_correct(*args, "--max_new_tokens", 2) == 0
    written = (tmp_path / "out.jsonl").read_text()
    capsys.readouterr()
    assert run_correct(*args, "--max_new_tokens", 3, "--template", "aligner-v1") == 2
    error = capsys.readouterr().err
    assert "out.jsonl was written with other max_new_tokens, template" in error
    # The batch size does not change the corrections: resuming with another is fine.
    assert run_correct(*args, "--max_new_tokens", 2, "--batch_size", 1) == 0
    assert (tmp_path / "out.jsonl").read_text() == written


@pytest.mark.parametrize(
    "content",
    [
        json.dumps([{"question": "q", "answer": "a"}]),  # no newline at the end
        "my notes on the answers",
        '{"id": 0, "question": "q"}\n{"id": 1, "question": "q"}\n',
    ],
    ids=["json-array", "notes", "ids-without-corrections"],
)
def test_a_file_correct_did_not_write_is_neither_resumed_nor_replaced(
    content: str, tiny_checkpoint_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", QUESTIONS[:2])
    args = ["--model_name_or_path", tiny_checkpoint_dir, "--input", source, "--max_new_tokens", 2]
    theirs = tmp_path / "theirs.jsonl"
    theirs.write_text(content)
    assert run_correct(*args, "--output", theirs) == 2
    assert capsys.readouterr().err.strip() == (
        f"aligner correct: error: --output {theirs} already exists and was not written by this "
        "command (no theirs.jsonl.settings.json beside it): choose another --output, or pass "
        "--overwrite to replace it"
    )
    # The same rule for the pairs, checked before any correction is made.
    mine = tmp_path / "mine.jsonl"
    assert run_correct(*args, "--output", mine, "--preference_output", theirs) == 2
    assert "error: --preference_output" in capsys.readouterr().err
    assert theirs.read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "theirs.jsonl"]

    assert run_correct(*args, "--output", theirs, "--overwrite") == 0
    assert [r["id"] for r in read_written(theirs)] == [0, 1]


def test_an_output_another_run_writes_is_refused_naming_it(
    tiny_checkpoint_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", QUESTIONS[:2])
    output = tmp_path / "out.jsonl"
    args = ["--model_name_or_path", tiny_checkpoint_dir, "--input", source, "--output", output]
    args += ["--max_new_tokens", 2]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from aligner.inference.output import lock_output; "
            "lock_output(sys.argv[1], '--output'); print('locked', flush=True); sys.stdin.read()",
            str(output),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        assert run_correct(*args) == 2
        assert capsys.readouterr().err.strip() == (
            f"aligner correct: error: --output {output} is being written by another run "
            f"(pid {holder.pid}): wait for it to end, or choose another --output"
        )
        assert not output.exists()
    finally:
        holder.kill()  # as a crash would: the lock goes with the process
        holder.wait()
    assert run_correct(*args) == 0
    assert len(read_written(output)) == 2


def test_resuming_an_output_with_repeated_ids_keeps_the_first_of_each(
    tiny_checkpoint_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", QUESTIONS[:3])
    output = tmp_path / "out.jsonl"
    args = ["--model_name_or_path", tiny_checkpoint_dir, "--input", source, "--output", output]
    args += ["--max_new_tokens", 2]
    assert run_correct(*args) == 0
    first = read_written(output)
    # What two runs appending at once, before outputs were locked, left behind.
    repeats = [{**first[2], "correction": "again"}, {**first[0], "correction": "again"}]
    with output.open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in repeats))
    capsys.readouterr()
    assert run_correct(*args) == 0
    assert read_written(output) == first
    captured = capsys.readouterr()
    assert (
        f"{output}: dropped 2 record(s) repeating an earlier record's id; kept the first of each"
        in captured.err
    )
    assert f"{output}: 3 corrected records (0 new)" in captured.out


@pytest.mark.parametrize("kind", ["null-device", "stdout", "fifo"])
def test_an_output_that_is_no_regular_file_is_refused_up_front(
    kind: str, tiny_checkpoint_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", QUESTIONS[:1])
    if kind == "fifo":
        output = tmp_path / "pipe"
        os.mkfifo(output)
    else:  # /dev/stdout is a link to pytest's capture file: a regular file
        output = Path(os.devnull if kind == "null-device" else "/dev/stdout")
    before = sorted(output.parent.iterdir())
    args = ["--model_name_or_path", tiny_checkpoint_dir, "--input", source, "--output", output]
    assert run_correct(*args) == 2
    assert capsys.readouterr().err.strip() == (
        f"aligner correct: error: --output {output}: is not a regular file (a device, pipe or "
        "socket); name a file to write"
    )
    assert sorted(output.parent.iterdir()) == before  # nothing written beside it


def test_an_empty_file_is_written_into(tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", QUESTIONS[:2])
    output = tmp_path / "out.jsonl"
    output.touch()  # mktemp's output: nothing in it to lose
    args = ["--model_name_or_path", tiny_checkpoint_dir, "--input", source, "--output", output]
    assert run_correct(*args, "--max_new_tokens", 2) == 0
    assert len(read_written(output)) == 2


def test_an_own_output_without_corrections_is_refused_before_the_pairs(
    tiny_checkpoint_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", QUESTIONS[:2])
    output, pairs = tmp_path / "out.jsonl", tmp_path / "pairs.jsonl"
    args = ["--model_name_or_path", tiny_checkpoint_dir, "--input", source, "--output", output]
    args += ["--max_new_tokens", 2]
    assert run_correct(*args) == 0
    stripped = [{k: v for k, v in r.items() if k != "correction"} for r in read_written(output)]
    write_jsonl(output, stripped)
    capsys.readouterr()
    assert run_correct(*args, "--preference_output", pairs) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"aligner correct: error: {output}:1: not a record with 'id' and 'correction'; "
        "cannot resume"
    )
    assert not pairs.exists()


def test_a_tokenizer_larger_than_the_embeddings_is_one_line(
    tiny_checkpoint_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = with_fewer_embedding_rows(tiny_checkpoint_dir, tmp_path / "short")
    tokens = len(load_tokenizer(str(checkpoint)))
    source = write_jsonl(tmp_path / "in.jsonl", QUESTIONS[:1])
    output = tmp_path / "out.jsonl"
    args = ["--model_name_or_path", checkpoint, "--input", source, "--output", output]
    assert run_correct(*args) == 2
    # Below the model's loading progress, one line.
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"aligner correct: error: --model_name_or_path {checkpoint}: the tokenizer has {tokens} "
        f"tokens but the model only {tokens - 10} embedding rows (ids {tokens - 10} and up would "
        "fail in the forward pass)"
    )
    assert not output.exists()


def test_truncated_weights_are_one_line_and_exit_1(
    tiny_checkpoint_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint_dir, checkpoint)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy cut short
    source = write_jsonl(tmp_path / "in.jsonl", QUESTIONS[:2])
    args = ["--model_name_or_path", checkpoint, "--input", source, "--output", tmp_path / "o"]
    assert run_correct(*args) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"aligner correct: error: --model_name_or_path {checkpoint}: ")
    assert len(error.splitlines()) == 1


@pytest.mark.parametrize("kind", ["random-0", "code"])
def test_corrupt_pickled_weights_are_one_line_and_never_run(
    kind: str, tiny_checkpoint_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "the-payload-ran"
    checkpoint = with_corrupt_bin_weights(tiny_checkpoint_dir, tmp_path / "ckpt", kind, marker)
    source = write_jsonl(tmp_path / "in.jsonl", QUESTIONS[:1])
    args = ["--model_name_or_path", checkpoint, "--input", source, "--output", tmp_path / "o"]
    assert run_correct(*args) == 1
    assert capsys.readouterr().err.strip() == (
        f"aligner correct: error: --model_name_or_path {checkpoint}: "
        f"{checkpoint / 'pytorch_model.bin'} does not load as PyTorch weights (corrupt, or a "
        "pickle holding code, which was not run)"
    )
    assert not marker.exists()


def test_resuming_after_new_weights_at_the_same_path_is_refused(
    tiny_checkpoint_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint_dir, checkpoint)
    source = write_jsonl(tmp_path / "in.jsonl", QUESTIONS[:3])
    output = tmp_path / "out.jsonl"
    args = ["--model_name_or_path", checkpoint, "--input", source, "--output", output]
    assert run_correct(*args, "--max_new_tokens", 2) == 0
    written = output.read_text()
    # Training again into the same folder saves other weights there.
    weights = load_file(checkpoint / "model.safetensors")
    save_file(
        {name: value + 1 for name, value in weights.items()}, checkpoint / "model.safetensors"
    )
    capsys.readouterr()
    assert run_correct(*args, "--max_new_tokens", 2) == 2
    assert capsys.readouterr().err.strip() == (
        f"aligner correct: error: {output} was written with other weights: pass another "
        "--output, or --overwrite to start over"
    )
    assert output.read_text() == written


def test_torn_last_line_is_cut_but_a_bad_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    first, second = '{"id": 0, "correction": "a"}\n', '{"id": 1, "correction": "b"}\n'
    path.write_text(first + second + '{"id": 2, "corr')
    assert read_written(path, repair=False) == [
        {"id": 0, "correction": "a"},
        {"id": 1, "correction": "b"},
    ]
    assert path.read_text().endswith('"corr')  # only looked at
    assert len(read_written(path)) == 2
    assert path.read_text() == first + second

    path.write_text(first + "not json\n" + second)
    with pytest.raises(OutputError, match=r"out.jsonl:2: not a JSON line"):
        read_written(path)
    path.write_text(first + '{"id": 1}\n')
    with pytest.raises(OutputError, match=r"out.jsonl:2: not a record with 'id' and 'correction'"):
        read_written(path, fields=("id", "correction"))


def test_rounds_correct_the_previous_correction_until_unchanged() -> None:
    def add_mark_up_to_two(requests: list[Request]) -> list[str]:
        # Marks each request's answer, at most twice in all.
        answers = [request.answer for request in requests]
        return [a if a.count("!") >= 2 else a + "!" for a in answers]

    records = [{"question": "q", "answer": "a"}, {"question": "q", "answer": "b!"}]
    histories = correct.correct_batch(add_mark_up_to_two, records, rounds=4)
    assert histories == [["a!", "a!!", "a!!"], ["b!!", "b!!"]]
    assert correct.correct_batch(add_mark_up_to_two, records, rounds=1) == [
        ["a!"],
        ["b!!"],
    ]


def test_rounds_flag_records_every_round(tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", QUESTIONS[:2])
    args = ["--model_name_or_path", tiny_checkpoint_dir, "--input", source, "--max_new_tokens", 3]
    assert run_correct(*args, "--output", tmp_path / "out.jsonl", "--rounds", 2) == 0
    for record in read_written(tmp_path / "out.jsonl"):
        rounds = record["correction_rounds"]
        assert 1 <= len(rounds) <= 2 and rounds[-1] == record["correction"]


def test_preference_pairs_skip_unchanged_and_empty_corrections(tmp_path: Path) -> None:
    records = [
        {"id": 0, "question": "Q0", "answer": "bad", "correction": "good"},
        {"id": 1, "question": "Q1", "answer": "fine", "correction": "fine "},
        {"id": 2, "question": "Q2", "answer": "bad", "correction": "  "},
        {"id": 3, "question": "Q3", "answer": "", "correction": "an answer"},
    ]
    stats = write_preferences(records, tmp_path / "pairs.jsonl")
    pairs = read_lines(tmp_path / "pairs.jsonl")
    assert pairs == [
        {"prompt": "Q0\n\n", "chosen": "good", "rejected": "bad"},
        {"prompt": "Q3\n\n", "chosen": "an answer", "rejected": ""},
    ]
    assert (stats.written, stats.skipped_unchanged, stats.skipped_empty) == (2, 1, 1)

    write_preferences(records[:1], tmp_path / "chat.jsonl", "conversational")
    assert read_lines(tmp_path / "chat.jsonl") == [
        {
            "prompt": [{"role": "user", "content": "Q0"}],
            "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        }
    ]


TRL_RECORDS = [
    {
        "question": "What is the capital of France?",
        "answer": "Paris is in Germany.",
        "correction": "Paris.",
    },
    {"question": "Sum of 2 and 2", "answer": "5", "correction": "4"},
    {"question": "Spell 'cat'.", "answer": "k-a-t", "correction": "c-a-t"},
    {"question": "你好？", "answer": "😀", "correction": "你好！"},
    {"question": "Ends with a space ", "answer": ":)", "correction": ":-)"},
]


def prompt_is_a_prefix(tokenizer, pair: dict) -> bool:
    """TRL's check: the prompt's tokens begin the tokens of the prompt joined to each reply."""
    prompt = tokenizer(pair["prompt"])["input_ids"]
    joined = [tokenizer(pair["prompt"] + pair[key])["input_ids"] for key in ("chosen", "rejected")]
    return all(ids[: len(prompt)] == prompt for ids in joined)


def test_standard_prompts_end_on_a_token_boundary(any_tokenizer, chatml_tokenizer_dir, tmp_path):
    write_preferences(TRL_RECORDS, tmp_path / "plain.jsonl")
    assert all(prompt_is_a_prefix(any_tokenizer, p) for p in read_lines(tmp_path / "plain.jsonl"))

    upstream = load_tokenizer(str(chatml_tokenizer_dir))
    write_preferences(TRL_RECORDS, tmp_path / "chat.jsonl", upstream=upstream)
    pairs = read_lines(tmp_path / "chat.jsonl")
    assert pairs[0]["prompt"] == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert all(prompt_is_a_prefix(upstream, pair) for pair in pairs)


def test_bare_questions_would_merge_with_replies(llama_tokenizer, tekken_tokenizer) -> None:
    bare = [
        {"prompt": r["question"], "chosen": r["correction"], "rejected": r["answer"]}
        for r in TRL_RECORDS
    ]
    for tokenizer in (llama_tokenizer, tekken_tokenizer):
        assert not all(prompt_is_a_prefix(tokenizer, pair) for pair in bare)


def test_trl_dpo_trainer_joins_the_pairs_cleanly(tiny_llama_dir, tmp_path, caplog) -> None:
    trl = pytest.importorskip("trl")
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(tiny_llama_dir))
    write_preferences(TRL_RECORDS, tmp_path / "pairs.jsonl")
    pairs = load_dataset("json", data_files=str(tmp_path / "pairs.jsonl"), split="train")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    config = trl.DPOConfig(output_dir=str(tmp_path / "dpo"), report_to=[], use_cpu=True)
    with caplog.at_level("WARNING"):
        trainer = trl.DPOTrainer(
            model=model, args=config, train_dataset=pairs, processing_class=tokenizer
        )
    assert "not a prefix" not in caplog.text
    for row, pair in zip(trainer.train_dataset, pairs, strict=True):
        assert row["prompt_ids"] == tokenizer(pair["prompt"])["input_ids"]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_preference_output_from_correct(
    memorised_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [*MEMORISED, {"question": "Already right?", "answer": "Four."}]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    args = ["--model_name_or_path", memorised_checkpoint, "--input", source]
    args += ["--output", tmp_path / "out.jsonl", "--preference_output", tmp_path / "pairs.jsonl"]
    assert run_correct(*args, "--max_new_tokens", 16) == 0
    pairs = read_lines(tmp_path / "pairs.jsonl")
    expected = [
        {"prompt": r["question"] + "\n\n", "chosen": r["correction"], "rejected": r["answer"]}
        for r in MEMORISED
    ]
    # The fourth pair is kept only if the model changed its answer.
    assert pairs[:3] == expected
    for pair in pairs:
        assert set(pair) == {"prompt", "chosen", "rejected"}
        assert all(isinstance(value, str) for value in pair.values())
    assert "preference pairs" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("no-template", "has no prompt_template.json: pass --template"),
        ("missing-model", "--model_name_or_path ./no-such-model: no such folder"),
        ("missing-answer", "answer"),
        ("duplicate-ids", "share the id 'x'"),
        ("bad-rounds", "--rounds must be at least 1"),
        ("same-file", "must be different files"),
        ("sampling-without-do-sample", "--top_p take effect only with --do_sample"),
        ("zero-temperature", "--temperature must be a finite number above 0"),
        ("nan-temperature", "--temperature must be a finite number above 0"),
    ],
)
def test_user_errors_are_one_line(
    setup: str,
    message: str,
    tiny_checkpoint_dir: Path,
    tiny_llama_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    records, model, extra = QUESTIONS[:2], tiny_checkpoint_dir, []
    output = tmp_path / "out.jsonl"
    if setup == "no-template":
        model = tiny_llama_dir
    elif setup == "missing-model":
        model = "./no-such-model"
    elif setup == "missing-answer":
        records = [{"question": "q"}]
    elif setup == "duplicate-ids":
        records = [{"id": "x", **QUESTIONS[0]}, {"id": "x", **QUESTIONS[1]}]
    elif setup == "bad-rounds":
        extra = ["--rounds", 0]
    elif setup == "same-file":
        output = tmp_path / "in.jsonl"
    elif setup == "sampling-without-do-sample":
        extra = ["--top_p", 0.9]
    elif setup == "zero-temperature":
        extra = ["--do_sample", "--temperature", 0]
    elif setup == "nan-temperature":
        extra = ["--do_sample", "--temperature", "nan"]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    code = run_correct("--model_name_or_path", model, "--input", source, "--output", output, *extra)
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("aligner correct: error:") and message in error
    assert len(error.splitlines()) == 1


def test_correct_loads_an_adapter_only_lora_checkpoint(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    # Random adapter weights (not the zero init), so the adapter visibly changes the output.
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora = get_peft_model(base, config).eval()
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)  # adapter_config.json names the base model's folder
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    tokenizer.save_pretrained(adapter)
    get_template().save(adapter)

    source = write_jsonl(tmp_path / "in.jsonl", QUESTIONS[:3])
    args = ["--model_name_or_path", adapter, "--input", source, "--max_new_tokens", 8]
    assert run_correct(*args, "--output", tmp_path / "out.jsonl") == 0
    encoder = SampleEncoder(tokenizer, get_template(), max_length=512)
    prompts, stops = prompt_ids(encoder, QUESTIONS[:3]), encoder.stop_token_ids()
    options = GenerationOptions(max_new_tokens=8)
    expected = generate(lora, tokenizer, prompts, options, stops)
    with lora.disable_adapter():
        assert generate(lora, tokenizer, prompts, options, stops) != expected
    assert [r["correction"] for r in read_written(tmp_path / "out.jsonl")] == expected


@pytest.mark.parametrize(
    ("checkpoint", "records"),
    [("memorised_checkpoint", MEMORISED), ("chat_checkpoint", CHAT_MEMORISED)],
)
def test_a_completions_server_gives_the_local_corrections(
    checkpoint: str, records: list[dict], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    folder = request.getfixturevalue(checkpoint)
    source = write_jsonl(tmp_path / "in.jsonl", records + QUESTIONS[:3])
    args = ["--model_name_or_path", folder, "--input", source, "--max_new_tokens", 12]
    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    assert run_correct(*args, "--output", local) == 0
    server = completions_app(folder)
    with serving(server) as url:
        flags = ["--aligner_url", url, "--aligner_model", "aligner", "--batch_size", 2]
        assert run_correct(*args, "--output", remote, *flags) == 0
    assert read_lines(remote) == read_lines(local)
    assert [line["correction"] for line in read_lines(remote)[:3]] == [
        r["correction"] for r in records
    ]
    encoder = SampleEncoder(
        load_tokenizer(str(folder)), get_template(str(folder / "prompt_template.json")), 1 << 30
    )
    expected = prompt_ids(encoder, records + QUESTIONS[:3])
    assert sorted(server.state.prompts) == sorted(expected)


def test_a_completions_server_that_keeps_failing_stops_the_run_in_one_line(
    memorised_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    failing = FastAPI()
    failing.post("/v1/completions")(lambda: JSONResponse({"error": "overloaded"}, 503))
    source = write_jsonl(tmp_path / "in.jsonl", MEMORISED)
    output = tmp_path / "out.jsonl"
    with serving(failing) as url:
        code = run_correct(
            "--model_name_or_path",
            memorised_checkpoint,
            "--input",
            source,
            "--output",
            output,
            "--aligner_url",
            url,
            "--aligner_model",
            "aligner",
            "--aligner_retries",
            1,
            "--aligner_backoff",
            0,
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("aligner correct: error: ") and "HTTP 503" in err[-1]
    assert "Traceback" not in "".join(err)


def test_a_served_aligner_stops_where_the_loaded_one_does(
    tiny_checkpoint_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from transformers import AutoModelForCausalLM

    from aligner.inference.generate import stop_token_ids
    from aligner.inference.remote import checkpoint_stops

    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint_dir, folder)
    (folder / "generation_config.json").unlink(missing_ok=True)  # derived from config.json
    model = AutoModelForCausalLM.from_pretrained(folder)
    expected = stop_token_ids(model.generation_config, [7])
    assert checkpoint_stops(str(folder), [7]) == expected and len(expected) == 2
