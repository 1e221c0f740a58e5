"""The ``aligner`` commands, one module each: parse the flags, check everything, run, exit."""
