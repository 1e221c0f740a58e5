"""Batched, left-padded generation of corrections from prompt token ids."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

if TYPE_CHECKING:
    from aligner.config import CommandConfig


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding settings; a sampling setting left as None takes the model's own default."""

    max_new_tokens: int = 512
    """Most tokens generated per correction, EOS included."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    """0 disables top-k filtering."""

    @classmethod
    def from_args(cls, args: CommandConfig) -> GenerationOptions:
        """The options the generation flags (``--max_new_tokens``, ``--do_sample``...) name."""
        names = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k")
        return cls(**{name: getattr(args, name) for name in names})

    def settings(self, seed: int) -> dict[str, Any]:
        """What decides the generated text, for a run's settings file: these options, and the
        seed where it counts (when sampling)."""
        return {**asdict(self), "seed": seed if self.do_sample else None}

    def generation_config(self, pad_token_id: int, eos_token_ids: list[int]) -> GenerationConfig:
        sampling = {}
        if self.do_sample:
            sampling = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
            sampling = {name: value for name, value in sampling.items() if value is not None}
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_ids,
            **sampling,
        )


def left_pad(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``(input_ids, attention_mask)``, both (B, L).

    The mask comes from the lengths, not from comparing ids with the pad id: the pad id may be
    a real token (UNK or EOS) that also occurs inside a prompt.
    """
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def stop_token_ids(config: GenerationConfig, template_stops: list[int]) -> list[int]:
    """What ends a correction: the template's end of turn and EOS (which training puts at the end
    of every target), and the model's own EOS from its generation ``config``."""
    ids = list(template_stops)
    configured = config.eos_token_id
    for token_id in configured if isinstance(configured, list) else [configured]:
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    return ids


def cut_at_stop(ids: list[int], stop_ids: list[int]) -> list[int]:
    """The generated ids before the first stop token (what follows it is padding)."""
    for position, token_id in enumerate(ids):
        if token_id in stop_ids:
            return ids[:position]
    return ids


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    options: GenerationOptions,
    template_stops: list[int],
) -> list[str]:
    """Generate one continuation per prompt, in one left-padded batch, without its stop token.

    ``prompts`` are token ids as training has them before the target
    (``SampleEncoder.prompt_ids``); ``template_stops`` end a continuation
    (``SampleEncoder.stop_token_ids``).
    """
    if not prompts:
        return []
    input_ids, attention_mask = left_pad(prompts, tokenizer.pad_token_id)
    stops = stop_token_ids(model.generation_config, template_stops)
    output = model.generate(
        input_ids=input_ids.to(model.device),
        attention_mask=attention_mask.to(model.device),
        generation_config=options.generation_config(tokenizer.pad_token_id, stops),
    )  # (B, L + new)
    new_tokens = output[:, input_ids.shape[1] :].tolist()
    return [
        tokenizer.decode(cut_at_stop(ids, stops), skip_special_tokens=True) for ids in new_tokens
    ]
