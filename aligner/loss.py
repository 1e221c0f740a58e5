"""The correction loss, the one that training and evaluation both compute: summed token
cross-entropy at target positions (where the next token is a target), for a mean over tokens.

A batch returns its *sum* of target-token losses and its target-token count. The trainer divides
by the target tokens of the whole global batch (all micro-batches, all ranks), so the loss and
its gradient do not depend on how the batch is split; ``aligner eval`` by those of the whole
evaluation set. This module loads no DeepSpeed.
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


class FusedLinearTokenLoss(nn.Module):
    """The LM head and cross-entropy in one Liger kernel: the (N, V) logits never exist whole."""

    ACCURACY_CHUNK = 4096
    """Target rows per chunk when counting argmax hits, to keep the logits memory bounded."""

    def __init__(self) -> None:
        super().__init__()
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        except ImportError as error:
            raise ImportError(
                f"--use_liger needs the liger-kernel package (pip install liger-kernel): {error}"
            ) from None
        self.loss = LigerFusedLinearCrossEntropyLoss(reduction="sum")

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
        """``hidden`` (N, H) at target positions, ``weight`` (V, H), ``targets`` (N,)."""
        loss_sum = self.loss(weight, hidden, targets).float()
        with torch.no_grad():
            correct = sum(
                (chunk @ weight.T).argmax(dim=-1).eq(target).sum()
                for chunk, target in zip(
                    hidden.split(self.ACCURACY_CHUNK),
                    targets.split(self.ACCURACY_CHUNK),
                    strict=True,
                )
            )
        return TokenLoss(
            loss_sum,
            torch.as_tensor(correct, device=targets.device),
            torch.tensor(targets.numel(), device=targets.device),
        )


class CorrectionLM(nn.Module):
    """Wraps a causal LM so the DeepSpeed engine's forward returns a TokenLoss.

    Only the hidden states at target positions go through the LM head: with a large vocabulary
    the head is a big share of the compute, and correction targets are a minority of tokens.
    """

    def __init__(
        self, lm: nn.Module, *, head_on_targets_only: bool = True, use_liger: bool = False
    ) -> None:
        super().__init__()
        self.lm = lm
        config = lm.config
        plain_head = not any(getattr(config, name, None) for name in _LOGIT_TRANSFORMS)
        self.head_on_targets_only = head_on_targets_only and plain_head
        if use_liger and not plain_head:
            raise ValueError("--use_liger: this model transforms its logits after the LM head")
        if use_liger and getattr(lm.get_output_embeddings(), "bias", None) is not None:
            raise ValueError("--use_liger: this model's LM head has a bias")
        self.fused_loss = FusedLinearTokenLoss() if use_liger else None

    def enable_activation_checkpointing(self) -> None:
        """Recompute each layer's activations in the backward pass (non-reentrant)."""
        options = {"use_reentrant": False}
        # transformers 5 renamed gradient_checkpointing_enable and deprecated the old name.
        if hasattr(self.lm, "activation_checkpointing_enable"):
            self.lm.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor | None = None,  # (B, L); None for a packed row
        labels: torch.Tensor | None = None,  # (B, L); None returns the logits (B, L, V)
        position_ids: torch.Tensor | None = None,  # (1, T) restarting per sample when packed
    ) -> TokenLoss | torch.Tensor:
        # use_cache=False always: with a cache built, packed samples would attend to each other.
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "use_cache": False,
        }
        if labels is None:
            return self.lm(**inputs).logits
        mask, targets = target_positions(labels)
        if self.fused_loss is not None:
            hidden = self.lm.get_decoder()(**inputs).last_hidden_state[:, :-1][mask]  # (N, H)
            return self.fused_loss(hidden, self.lm.get_output_embeddings().weight, targets)
        if self.head_on_targets_only:
            hidden = self.lm.get_decoder()(**inputs).last_hidden_state  # (B, L, H)
            logits = self.lm.get_output_embeddings()(hidden[:, :-1][mask])  # (N, V)
        else:
            logits = self.lm(**inputs).logits[:, :-1][mask]  # (N, V)
        return token_loss(logits, targets)
