"""``aligner serve``: an OpenAI-compatible server that corrects an upstream model's replies."""
