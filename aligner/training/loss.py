"""The correction loss: summed token cross-entropy at target positions, for a global-batch mean.

A micro-batch returns its *sum* of target-token losses and its target-token count; the trainer
divides by the target tokens of the whole global batch (all micro-batches, all ranks), so the
loss and its gradient do not depend on how the batch is split.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from aligner.constants import IGNORE_INDEX

# Models that transform logits after the LM head (soft-capping, scaling) need the full forward.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


class TokenLoss(NamedTuple):
    loss_sum: torch.Tensor  # () float32: sum of cross-entropy over target tokens
    correct: torch.Tensor  # () int64: target tokens whose argmax prediction is right
    tokens: torch.Tensor  # () int64: target tokens


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> TokenLoss:
    """Cross-entropy sum and hits of ``logits`` (N, V) against ``targets`` (N,), in float32."""
    logits = logits.float()
    loss_sum = F.cross_entropy(logits, targets, reduction="sum")
    correct = (logits.argmax(dim=-1) == targets).sum()
    return TokenLoss(loss_sum, correct, torch.tensor(targets.numel(), device=targets.device))


def target_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the next token is a target: a (B, L-1) mask and the (N,) target ids it selects."""
    next_labels = labels[:, 1:]  # (B, L-1): position t predicts token t+1
    mask = next_labels != IGNORE_INDEX
    return mask, next_labels[mask]


class CorrectionLM(nn.Module):
    """Wraps a causal LM so the DeepSpeed engine's forward returns a TokenLoss.

    Only the hidden states at target positions go through the LM head: with a large vocabulary
    the head is a big share of the compute, and correction targets are a minority of tokens.
    """

    def __init__(self, lm: nn.Module, *, head_on_targets_only: bool = True) -> None:
        super().__init__()
        self.lm = lm
        config = lm.config
        self.head_on_targets_only = head_on_targets_only and not any(
            getattr(config, name, None) for name in _LOGIT_TRANSFORMS
        )

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor,  # (B, L)
        labels: torch.Tensor | None = None,  # (B, L); None returns the logits (B, L, V)
    ) -> TokenLoss | torch.Tensor:
        if labels is None:
            return self.lm(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).logits
        mask, targets = target_positions(labels)
        if self.head_on_targets_only:
            hidden = self.lm.get_decoder()(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).last_hidden_state  # (B, L, H)
            logits = self.lm.get_output_embeddings()(hidden[:, :-1][mask])  # (N, V)
        else:
            full = self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            logits = full.logits[:, :-1][mask]  # (N, V)
        return token_loss(logits, targets)
