"""Scoring a corrected file with a reward and a cost model: per-record scores, resumable, by rank.

Each line of the scores file is a corrected record plus ``reward_answer``, ``reward_correction``
(and ``cost_answer``, ``cost_correction``). Lines are appended and synced as they are scored, so
re-running the same command skips the records already scored. Under a launcher the records are
spread over the ranks as ``aligner correct`` spreads them, each rank scoring on its own GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from aligner.inference.comparison import LOSE, WIN, outcomes, paired_summary
from aligner.inference.output import (
    append_durably,
    check_claim,
    claim_output,
    read_written,
    shard_path,
)
from aligner.inference.pairs import Pair, pairs_digest, transcript
from aligner.inference.resumable import id_key, merge_written
from aligner.inference.reward import RewardModel, ScoringError, load_reward_model
from aligner.runtime import Ranks

RECORDS_PER_WRITE = 4
"""Records scored, then appended and synced, per ``--batch_size``: about eight batches."""


@dataclass(frozen=True)
class ScoringOptions:
    models: dict[str, str]
    """The checkpoint of each kind given (``reward``, ``cost``)."""
    output: Path
    source: str
    """The corrected file, for messages."""
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None
    trust_remote_code: bool = False
    overwrite: bool = False


def resolved(path: str) -> str:
    return str(Path(path).resolve()) if Path(path).exists() else path


def score_chunk(
    models: dict[str, RewardModel], chunk: list[Pair], source: str = "predictions"
) -> list[dict[str, Any]]:
    """The chunk's records, each with its scores under every model (``source``: the file)."""
    lines = [dict(pair.record) for pair in chunk]
    contexts = [pair.context for pair in chunk]
    for kind, model in models.items():
        answers = model.encode(contexts, [pair.answer for pair in chunk])
        corrections = model.encode(contexts, [pair.correction for pair in chunk])
        limit = model.max_length
        for pair, a, c in zip(chunk, answers, corrections, strict=True):
            if limit is not None and max(len(a), len(c)) > limit:
                raise ScoringError(
                    f"{source}: record {pair.id!r}: {max(len(a), len(c))} tokens with its "
                    f"context, more than the {limit} that the {kind} model takes"
                )
        scores = model.score(answers + corrections)
        for line, answer, correction in zip(
            lines, scores[: len(chunk)], scores[len(chunk) :], strict=True
        ):
            line[f"{kind}_answer"], line[f"{kind}_correction"] = answer, correction
    return lines


def load_models(options: ScoringOptions, ranks: Ranks) -> dict[str, RewardModel]:
    return {
        kind: load_reward_model(
            f"--{kind}_model",
            path,
            batch_size=options.batch_size,
            device=options.device,
            dtype=options.dtype,
            device_map=options.device_map,
            trust_remote_code=options.trust_remote_code,
            local_rank=ranks.local_rank,
        )
        for kind, path in options.models.items()
    }


def score_share(
    models: dict[str, RewardModel], pairs: list[Pair], shard: Path, ranks: Ranks, source: str
) -> None:
    """Score ``pairs`` (this rank's share) and append them to ``shard``."""
    size = RECORDS_PER_WRITE * min(model.batch_size for model in models.values())
    desc = "score" if ranks.world_size == 1 else f"score (rank 0 of {ranks.world_size})"
    with (
        open(shard, "a", encoding="utf-8") as handle,
        tqdm(total=len(pairs), unit="record", desc=desc, disable=not ranks.is_main) as bar,
    ):
        for start in range(0, len(pairs), size):
            chunk = pairs[start : start + size]
            append_durably(handle, score_chunk(models, chunk, source))
            bar.update(len(chunk))


def score_pairs(
    options: ScoringOptions, pairs: list[Pair], ranks: Ranks
) -> list[dict[str, Any]] | None:
    """Score every pair, resuming what an earlier run wrote; the lines in input order (on the
    main rank; None on the others)."""
    output = options.output
    records = [pair.record for pair in pairs]
    settings = {
        "predictions": pairs_digest(pairs),
        **{f"{kind}_model": resolved(path) for kind, path in options.models.items()},
        "dtype": options.dtype,
    }
    claim = {"overwrite": options.overwrite, "flag": "--scores_output"}
    # Refused outputs first, then the models, then the first write: a refused file or a bad
    # checkpoint costs no model load or leaves no trace.
    check_claim(output, settings, **claim)
    models = load_models(options, ranks)
    if ranks.is_main:
        claim_output(output, settings, **claim)
        merge_written(output, records)
    ranks.barrier()
    done = {id_key(line["id"]) for line in read_written(output)}
    pending = [pair for pair in pairs if id_key(pair.id) not in done]
    if done and ranks.is_main:
        print(f"{output}: {len(done)} records already scored, skipped")
    # Longest first, dealt round-robin: every rank gets a similar load, and a batch too large
    # for memory shows up in the first minute.
    by_length = sorted(
        pending,
        key=lambda p: len(transcript(p.context)) + len(p.answer) + len(p.correction),
        reverse=True,
    )
    mine = by_length[ranks.rank :: ranks.world_size]
    if mine:
        shard = output if ranks.world_size == 1 else shard_path(output, ranks.rank)
        score_share(models, mine, shard, ranks, options.source)
    ranks.barrier()
    if not ranks.is_main:
        return None
    return merge_written(output, records)


def summarise(
    lines: list[dict[str, Any]],
    models: dict[str, str],
    *,
    tie_margin: float,
    bootstrap_samples: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """The ``reward`` and ``cost`` sections of the report."""
    report: dict[str, dict[str, Any]] = {}
    results = {}
    for kind, path in models.items():
        answer = [line[f"{kind}_answer"] for line in lines]
        correction = [line[f"{kind}_correction"] for line in lines]
        options = {"lower_is_better": kind == "cost", "tie_margin": tie_margin}
        summary = paired_summary(
            answer, correction, bootstrap_samples=bootstrap_samples, seed=seed, **options
        )
        report[kind] = {"model": path, **summary, "tie_margin": tie_margin}
        results[kind] = outcomes(answer, correction, **options)
    if len(results) == 2 and lines:
        both = (results["reward"] == WIN) & (results["cost"] != LOSE)
        report["cost"]["better_and_not_more_harmful"] = float(both.mean())
    return report
