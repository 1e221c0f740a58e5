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

from aligner.inference.comparison import LOSE, WIN, outcomes, paired_summary
from aligner.inference.model_loading import resolved_name
from aligner.inference.pairs import Pair, pair_lookup, pairs_digest, transcript
from aligner.inference.resumable import ResumableJob, append_in_batches, longest_first
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


def score_pairs(
    options: ScoringOptions, pairs: list[Pair], ranks: Ranks
) -> list[dict[str, Any]] | None:
    """Score every pair, resuming what an earlier run wrote; the lines in input order (on the
    main rank; None on the others)."""
    settings = {
        "predictions": pairs_digest(pairs),
        **{f"{kind}_model": resolved_name(path) for kind, path in options.models.items()},
        "dtype": options.dtype,
    }
    job = ResumableJob(
        options.output,
        [pair.record for pair in pairs],
        settings,
        verb="scored",
        overwrite=options.overwrite,
        flag="--scores_output",
    )
    # Refused outputs first, then the models, then the first write: a refused file or a bad
    # checkpoint costs no model load or leaves no trace.
    job.check()
    models = load_models(options, ranks)
    size = RECORDS_PER_WRITE * min(model.batch_size for model in models.values())
    pair_of = pair_lookup(pairs)

    def write_share(mine: list[dict[str, Any]], shard: Path) -> None:
        def lines_of(chunk: list[Pair]) -> list[dict[str, Any]]:
            return score_chunk(models, chunk, options.source)

        append_in_batches(
            shard, [pair_of(r) for r in mine], size, lines_of, desc="score", ranks=ranks
        )

    def length(record: dict[str, Any]) -> int:
        pair = pair_of(record)
        return len(transcript(pair.context)) + len(pair.answer) + len(pair.correction)

    result = job.run(ranks, write_share, order=lambda pending: longest_first(pending, length))
    return None if result is None else result[0]


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
