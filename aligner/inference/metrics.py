"""Text metrics for generated corrections: copy rate, edit distance, exact match, ROUGE-L.

All of them compare whitespace tokens (``str.split()``), case-sensitively: the edit distance is
a Levenshtein distance over words, so it counts words inserted, deleted or replaced, and
ROUGE-L is the F-measure (beta = 1) of the longest common subsequence of words.
"""

from __future__ import annotations


def words(text: str) -> list[str]:
    return text.split()


def is_copy(correction: str, answer: str) -> bool:
    """Whether the correction returns the answer unchanged (ignoring surrounding whitespace)."""
    return correction.strip() == answer.strip()


def exact_match(prediction: str, reference: str) -> bool:
    """Whether the prediction equals the reference (ignoring surrounding whitespace)."""
    return prediction.strip() == reference.strip()


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions from a to b."""
    if len(a) < len(b):
        a, b = b, a
    # One row of the dynamic-programming table at a time: memory O(len(b)).
    previous = list(range(len(b) + 1))
    for i, token_a in enumerate(a, start=1):
        current = [i]
        for j, token_b in enumerate(b, start=1):
            current.append(
                min(
                    previous[j] + 1,
                    current[j - 1] + 1,
                    previous[j - 1] + (token_a != token_b),
                )
            )
        previous = current
    return previous[-1]


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of a and b."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0]
        for j, token_b in enumerate(b, start=1):
            if token_a == token_b:
                current.append(previous[j - 1] + 1)
            else:
                current.append(max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of the prediction against the reference, in [0, 1].

    Two empty texts score 1.0 (they are equal); one empty text scores 0.0.
    """
    pred, ref = words(prediction), words(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def correction_metrics(
    answers: list[str], corrections: list[str], references: list[str | None] | None = None
) -> dict[str, float | int]:
    """Aggregate metrics of corrections against their answers and, where given, references.

    ``copy_rate`` is the share of corrections equal to their answer; ``mean_edit_distance`` the
    mean word-level Levenshtein distance from answer to correction; ``edit_rate`` the same
    distance divided by the longer text's word count, averaged. ``mean_answer_words`` and
    ``mean_correction_words`` are the mean lengths, and ``longer_rate`` the share of corrections
    longer than their answer: judges and reward models tend to favour longer replies, so a win
    rate is read beside them. ``exact_match`` and ``rouge_l``
    are averaged over the records with a reference (None marks a record without one).
    """
    if len(answers) != len(corrections):
        raise ValueError(f"{len(answers)} answers but {len(corrections)} corrections")
    if references is not None and len(references) != len(corrections):
        raise ValueError(f"{len(references)} references but {len(corrections)} corrections")
    count = len(corrections)
    report: dict[str, float | int] = {"num_records": count}
    if count == 0:
        return report
    distances, rates, lengths = [], [], []
    for answer, correction in zip(answers, corrections, strict=True):
        a, c = words(answer), words(correction)
        distance = edit_distance(a, c)
        distances.append(distance)
        rates.append(distance / max(len(a), len(c), 1))
        lengths.append((len(a), len(c)))
    report["copy_rate"] = sum(map(is_copy, corrections, answers)) / count
    report["mean_edit_distance"] = sum(distances) / count
    report["edit_rate"] = sum(rates) / count
    report["mean_answer_words"] = sum(a for a, _ in lengths) / count
    report["mean_correction_words"] = sum(c for _, c in lengths) / count
    report["longer_rate"] = sum(c > a for a, c in lengths) / count
    pairs = [
        (correction, reference)
        for correction, reference in zip(corrections, references or [None] * count, strict=True)
        if reference is not None
    ]
    if pairs:
        report["num_references"] = len(pairs)
        report["exact_match"] = sum(exact_match(p, r) for p, r in pairs) / len(pairs)
        report["rouge_l"] = sum(rouge_l(p, r) for p, r in pairs) / len(pairs)
    return report
