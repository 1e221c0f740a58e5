"""Correction training on DeepSpeed: flags, config, loss, loop, checkpoints and tracking."""
