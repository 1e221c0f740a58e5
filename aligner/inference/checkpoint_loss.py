"""A checkpoint's loss on data: the mean cross-entropy per target token, and its perplexity,
computed as training computes it."""

from __future__ import annotations

import math
from typing import Any

import datasets
import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from aligner.config import EvalConfig
from aligner.datasets.collate import PaddingCollator
from aligner.datasets.pipeline import build_dataset
from aligner.inference.model_loading import checkpoint_template, load_model
from aligner.loss import CorrectionLM
from aligner.tokenizer import load_tokenizer


@torch.inference_mode()
def target_loss(
    model: PreTrainedModel, dataset: datasets.Dataset, pad_token_id: int, batch_size: int
) -> dict[str, float | int]:
    """Mean cross-entropy over every target token of ``dataset`` (not a mean of batch means),
    computed as training computes it."""
    collate = PaddingCollator(pad_token_id)
    correction_loss = CorrectionLM(model)
    # Longest first, so that each batch pads little and memory trouble shows up at once.
    order = np.argsort(-np.asarray(dataset["length"]), kind="stable")
    columns = dataset.select_columns(["input_ids", "labels"])
    total, count = 0.0, 0
    for start in tqdm(range(0, len(order), batch_size), desc="eval loss", unit="batch"):
        chunk = columns[order[start : start + batch_size].tolist()]
        pairs = zip(chunk["input_ids"], chunk["labels"], strict=True)
        batch = collate([{"input_ids": ids, "labels": labels} for ids, labels in pairs])
        out = correction_loss(**{key: value.to(model.device) for key, value in batch.items()})
        total += out.loss_sum.item()
        count += int(out.tokens)
    loss = total / count
    return {
        "num_samples": len(dataset),
        "num_target_tokens": count,
        "loss": loss,
        "perplexity": math.exp(loss),
    }


def checkpoint_loss(args: EvalConfig) -> dict[str, Any]:
    template = checkpoint_template(
        args.model_name_or_path, args.prompt_template, args.system_prompt
    )
    tokenizer = load_tokenizer(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    dataset, stats = build_dataset(
        args.eval_datasets,
        tokenizer,
        template,
        max_length=args.max_length,
        lenient=args.lenient_data,
        cache_dir=args.data_cache_dir,
        dataset_modules=args.dataset_module,
    )
    model = load_model(args, len(tokenizer))
    report = target_loss(model, dataset, tokenizer.pad_token_id, args.batch_size)
    return {
        "checkpoint": args.model_name_or_path,
        "template": template.name,
        **report,
        "data": stats.to_dict(),
    }
