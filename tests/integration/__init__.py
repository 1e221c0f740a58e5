"""Multi-process DeepSpeed training on CPU ranks."""
