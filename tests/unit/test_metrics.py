"""Correction metrics on cases small enough to compute by hand."""

from __future__ import annotations

import pytest

from aligner.inference.metrics import (
    correction_metrics,
    edit_distance,
    exact_match,
    is_copy,
    lcs_length,
    rouge_l,
)


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("", "", 0),
        ("a b c", "", 3),
        ("", "x y", 2),
        ("the cat sat", "the cat sat", 0),
        ("the cat sat", "the dog sat", 1),  # one substitution
        ("the cat sat", "the cat sat down", 1),  # one insertion
        ("the cat sat", "cat sat", 1),  # one deletion
        ("the cat sat", "the dog sat down", 2),
        ("a b c d", "d c b a", 4),  # the reverse: not a permutation-aware distance
    ],
)
def test_edit_distance_counts_word_edits(a: str, b: str, distance: int) -> None:
    assert edit_distance(a.split(), b.split()) == distance
    assert edit_distance(b.split(), a.split()) == distance


def test_edit_distance_is_on_words_not_characters() -> None:
    assert edit_distance(["kitten"], ["sitting"]) == 1


def test_lcs_length() -> None:
    assert lcs_length("a b c d e".split(), "a c e".split()) == 3
    assert lcs_length("a b".split(), "c d".split()) == 0


def test_rouge_l_hand_computed() -> None:
    # LCS "the cat on the mat" = 5 words; precision 5/6, recall 5/5; F = 2PR / (P + R) = 10/11.
    assert rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    # LCS "a c" = 2; P = 2/3, R = 2/2 -> F = 0.8.
    assert rouge_l("a b c", "a c") == pytest.approx(0.8)
    assert rouge_l("same words", "same words") == 1.0
    assert rouge_l("nothing shared", "entirely different") == 0.0
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "something") == 0.0


def test_exact_match_and_copy_ignore_surrounding_whitespace_only() -> None:
    assert exact_match(" Paris.\n", "Paris.")
    assert not exact_match("paris.", "Paris.")
    assert is_copy("Answer. ", "Answer.")
    assert not is_copy("Answer!", "Answer.")


def test_correction_metrics_aggregate() -> None:
    answers = ["the sky is green", "two plus two is five", "hello"]
    corrections = ["the sky is blue", "two plus two is five", "hello there friend"]
    references = ["the sky is blue", "two plus two is four", None]
    report = correction_metrics(answers, corrections, references)
    assert report["num_records"] == 3
    assert report["copy_rate"] == pytest.approx(1 / 3)
    # Distances 1, 0, 2; rates 1/4, 0/5, 2/3.
    assert report["mean_edit_distance"] == pytest.approx(1.0)
    assert report["edit_rate"] == pytest.approx((1 / 4 + 0 + 2 / 3) / 3)
    # Lengths 4, 5, 1 answered and 4, 5, 3 corrected: one correction of three is longer.
    assert report["mean_answer_words"] == pytest.approx(10 / 3)
    assert report["mean_correction_words"] == pytest.approx(4.0)
    assert report["longer_rate"] == pytest.approx(1 / 3)
    # Two records have a reference: one exact, one with ROUGE-L 4/5 (LCS 4 of 5 and 5).
    assert report["num_references"] == 2
    assert report["exact_match"] == pytest.approx(0.5)
    assert report["rouge_l"] == pytest.approx((1.0 + 0.8) / 2)


def test_correction_metrics_without_references_has_no_reference_scores() -> None:
    report = correction_metrics(["a"], ["a"])
    assert report["copy_rate"] == 1.0
    assert "exact_match" not in report and "rouge_l" not in report


def test_correction_metrics_rejects_misaligned_lists() -> None:
    with pytest.raises(ValueError, match="2 answers but 1 corrections"):
        correction_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="1 references"):
        correction_metrics(["a", "b"], ["a", "b"], ["a"])
