"""The ``aligner`` command: dispatches ``aligner <command> ...`` to each command's module.

Usage:
    aligner data  --train_datasets FILE --model_name_or_path MODEL [--dump out.jsonl]
    aligner train --train_datasets FILE --model_name_or_path MODEL --output_dir DIR
    aligner answer --model_name_or_path UPSTREAM --input questions.jsonl --output answers.jsonl
    aligner correct --model_name_or_path CKPT --input answers.jsonl --output corrected.jsonl
    aligner eval --predictions corrected.jsonl [--reward_model RM] [--judge_url URL --judge_model M]
    aligner serve --model_name_or_path CKPT --upstream_url URL --upstream_model NAME
"""

from __future__ import annotations

import importlib
import sys

# Each command's module is imported only when that command runs, so that `aligner data`
# never pays for (or needs) DeepSpeed.
COMMANDS = {
    "data": ("aligner.commands.data", "validate, inspect and dump the processed training data"),
    "train": ("aligner.commands.train", "supervised correction training on DeepSpeed"),
    "answer": ("aligner.commands.answer", "the upstream model answers the questions"),
    "correct": ("aligner.commands.correct", "correct upstream answers with a trained aligner"),
    "eval": ("aligner.commands.eval", "did corrections help (reward, cost, judge); eval loss"),
    "serve": ("aligner.commands.serve", "an OpenAI-compatible endpoint that corrects a model"),
}


def usage() -> str:
    lines = ["usage: aligner <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines.append("\n`aligner <command> --help` shows a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return 2  # a usage error, as argparse reports one
    if argv[0] in {"-h", "--help"}:
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"aligner: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
