"""Shared fixtures: real tokenizers (Llama SentencePiece, Tekken BPE, a trained byte-level BPE)
and a tiny model of each family."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DATASET = REPO_ROOT / "template-dataset.json"

BPE_CORPUS = [
    "BEGINNING OF CONVERSATION: USER: ##Question: What is the capital of France?",
    "##Answer: Paris is the capital of Germany.\n##Correction:  ASSISTANT: Paris.",
    "hello world, hello there; the quick brown fox jumps over the lazy dog.",
    "Correct answers are helpful and harmless. I can't help with that request.",
    "你好，世界。こんにちは。😀 emoji and unicode: café, naïve, façade.",
] * 50


def saved_tensors(folder: Path) -> dict[str, tuple[str, int]]:
    """Each tensor in a model folder's safetensors files: its dtype and row count."""
    from safetensors import safe_open

    tensors = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(path, "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not a mapping)
                tensor = handle.get_slice(key)
                tensors[key] = (tensor.get_dtype(), tensor.get_shape()[0])
    return tensors


def with_fewer_embedding_rows(source: Path, target: Path, fewer: int = 10) -> Path:
    """A copy of the model folder ``source`` whose embeddings hold ``fewer`` rows less than its
    tokenizer has tokens."""
    import shutil

    import transformers

    shutil.copytree(source, target)
    config = transformers.AutoConfig.from_pretrained(source)
    model = getattr(transformers, config.architectures[0]).from_pretrained(source)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    model.resize_token_embeddings(len(tokenizer) - fewer)
    model.save_pretrained(target)
    return target


class _MakesFolder:
    """Pickled, this makes a folder when unpickled: code that a weights loader must not run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self):
        return (os.mkdir, (str(self.folder),))


def with_corrupt_bin_weights(source: Path, target: Path, kind: str, marker: Path) -> Path:
    """A copy of the model folder ``source`` whose weights are a ``pytorch_model.bin`` holding
    random bytes (``kind`` "random-SEED") or a pickle that makes the folder ``marker`` if run
    ("code")."""
    import pickle
    import random
    import shutil

    shutil.copytree(source, target)
    for weights in target.glob("*.safetensors"):
        weights.unlink()
    if kind == "code":
        data = pickle.dumps(_MakesFolder(marker))
    else:
        data = random.Random(int(kind.removeprefix("random-"))).randbytes(4096)
    (target / "pytorch_model.bin").write_bytes(data)
    return target


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own data cache; nothing is written to the user's home."""
    monkeypatch.setenv("ALIGNER_CACHE_DIR", str(tmp_path / "aligner-cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def llama_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aligner.tiny import write_llama_tokenizer

    return write_llama_tokenizer(tmp_path_factory.mktemp("llama-tokenizer"))


@pytest.fixture(scope="session")
def llama_tokenizer(llama_tokenizer_dir: Path):
    from aligner.tokenizer import load_tokenizer

    return load_tokenizer(str(llama_tokenizer_dir))


@pytest.fixture(scope="session")
def tekken_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 131k Tekken byte-level BPE (no BOS added by default), with a Mistral chat template."""
    from aligner.tiny import write_tekken_tokenizer

    return write_tekken_tokenizer(tmp_path_factory.mktemp("tekken-tokenizer"))


@pytest.fixture(scope="session")
def tekken_tokenizer(tekken_tokenizer_dir: Path):
    from aligner.tokenizer import load_tokenizer

    return load_tokenizer(str(tekken_tokenizer_dir))


CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""A Qwen-style ChatML template: its end of turn is ``<|im_end|>`` and a newline."""


@pytest.fixture(scope="session")
def chatml_tokenizer_dir(
    llama_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The Llama SentencePiece tokenizer with ChatML's two control tokens added and its template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    directory = tmp_path_factory.mktemp("chatml-tokenizer")
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer trained here: no BOS, no pad token, EOS only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(BPE_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    directory = tmp_path_factory.mktemp("bpe-tokenizer")
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def bpe_tokenizer(bpe_tokenizer_dir: Path):
    from aligner.tokenizer import load_tokenizer

    return load_tokenizer(str(bpe_tokenizer_dir))


@pytest.fixture(scope="session", params=["llama", "tekken", "bpe"])
def any_tokenizer(request: pytest.FixtureRequest):
    return request.getfixturevalue(f"{request.param}_tokenizer")


@pytest.fixture(scope="session")
def tiny_model(
    llama_tokenizer_dir: Path, tekken_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    """``tiny_model(family)``: the folder of that family's random-init tiny model with its real
    tokenizer (``aligner.tiny.FAMILIES``), built once per session (read-only: copy to modify)."""
    from aligner.tiny import FAMILIES, write_tiny_model

    tokenizers = {"llama": llama_tokenizer_dir, "tekken": tekken_tokenizer_dir}
    built: dict[str, Path] = {}

    def build(family: str) -> Path:
        if family not in built:
            built[family] = write_tiny_model(
                tmp_path_factory.mktemp(f"tiny-{family}"),
                family,
                tokenizer_dir=tokenizers[FAMILIES[family].tokenizer],
            )
        return built[family]

    return build


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    """``tiny_tokenizer(family)``: the tokenizer of that family's tiny model, loaded once per
    session (loading the 131k Tekken takes seconds)."""
    from aligner.tokenizer import load_tokenizer

    loaded = {}

    def load(family: str):
        if family not in loaded:
            loaded[family] = load_tokenizer(str(tiny_model(family)))
        return loaded[family]

    return load


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model) -> Path:
    """A random-init tiny Llama with the real Llama tokenizer (read-only: copy to modify)."""
    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama laid out as a trained checkpoint: with the default prompt_template.json."""
    import shutil

    from aligner.prompts import get_template

    directory = tmp_path_factory.mktemp("tiny-checkpoint") / "checkpoint"
    shutil.copytree(tiny_llama_dir, directory)
    get_template().save(directory)
    return directory


def memorise(
    model, tokenizer, template, records: list[dict], directory: Path, steps: int = 40
) -> Path:
    """Train ``model`` on ``records`` (full batch) until it reproduces their corrections, then
    save it as a checkpoint with ``template``."""
    import torch

    from aligner.datasets.collate import PaddingCollator
    from aligner.datasets.encode import SampleEncoder

    encoder = SampleEncoder(tokenizer, template, max_length=256)
    fields = ("question", "messages", "answer", "correction")
    names = [name for name in fields if any(name in record for record in records)]
    encoded = encoder({name: [r.get(name) for r in records] for name in names})
    pairs = zip(encoded["input_ids"], encoded["labels"], strict=True)
    rows = [{"input_ids": ids, "labels": labels} for ids, labels in pairs]
    batch = PaddingCollator(tokenizer.pad_token_id)(rows)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    encoder.template.save(directory)
    return directory


CHAT_MEMORISED = [
    {
        "messages": [
            {"role": "user", "content": "Boiling point of water?"},
            {"role": "assistant", "content": "100 °C."},
            {"role": "user", "content": "On Everest?"},
        ],
        "answer": "Also 100 °C.",
        "correction": "About 70 °C.",
    },
    {
        "question": "How do I end a text?",
        "answer": "[INST]",
        "correction": "Write </s> at the end.",
    },
    {"question": "Capital of Italy?", "answer": "Milan.", "correction": "Rome, not Milan."},
]


@pytest.fixture(scope="session")
def chat_checkpoint(chatml_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama on the ChatML tokenizer that memorised CHAT_MEMORISED through its chat
    template: single- and multi-turn records, one correction spelling ``</s>``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from aligner.prompts import get_template
    from aligner.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(chatml_tokenizer_dir))
    config = AutoConfig.for_model(
        "llama",
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    directory = tmp_path_factory.mktemp("chat-memorised") / "checkpoint"
    return memorise(model, tokenizer, get_template("chat"), CHAT_MEMORISED, directory, steps=60)


@pytest.fixture
def scripted_server():
    """Start ``JudgeServer(script, **options)`` stand-ins; each is shut down after the test."""
    from tests.standins import JudgeServer

    servers = []

    def start(script: dict[int, list[str]], **options: float) -> JudgeServer:
        server = JudgeServer(script, **options)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.gate.set()
        server.shutdown()
        server.server_close()
