"""Applying a trained aligner: batched correction, preference export and evaluation."""
