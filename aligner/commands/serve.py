"""``aligner serve``: an OpenAI-compatible server that puts a trained aligner after any model.

Usage:
    aligner serve --model_name_or_path ALIGNER --upstream_url http://localhost:8000/v1
        --upstream_model NAME [--host 127.0.0.1 --port 8080] [--api_key_env VAR]
        [--aligner_url http://localhost:8001/v1 --aligner_model NAME]

``POST /v1/chat/completions`` asks the upstream model, then returns the aligner's correction of
its reply as the message's ``content`` (the upstream's own reply is ``upstream_content``);
``stream: true`` streams the correction as it is generated. The aligner runs here, with
concurrent requests batched into one ``generate``, or on a vLLM/SGLang server
(``--aligner_url``); either way the checkpoint folder gives its tokenizer and template.
SIGTERM or Ctrl-C stops taking requests, lets those in flight finish, and exits.
"""

from __future__ import annotations

import sys

from aligner.config import ArgumentError, ServeConfig
from aligner.datasets.encode import SampleEncoder
from aligner.errors import Plan, run_command
from aligner.inference.correcting import INFERENCE_MAX_LENGTH
from aligner.inference.endpoint import api_key_from_env, endpoint_from_args
from aligner.inference.generate import GenerationOptions
from aligner.inference.model_loading import checkpoint_template, load_model
from aligner.inference.remote import remote_aligner_from_flags
from aligner.serving.app import Service, create_app
from aligner.serving.batcher import LocalAligner
from aligner.tokenizer import load_tokenizer


def prepare(args: ServeConfig) -> Plan[ServeConfig, Service]:
    """Every check, then the service with its aligner loaded; nothing listens yet."""
    upstream = endpoint_from_args(args, "upstream")
    if upstream is None:
        raise ArgumentError("give --upstream_url and --upstream_model")
    api_key = None
    if args.api_key_env:
        api_key = api_key_from_env(args.api_key_env)
        if api_key is None:
            raise ArgumentError(f"--api_key_env {args.api_key_env}: that variable is not set")
    tokenizer = load_tokenizer(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    encoder = SampleEncoder(
        tokenizer, checkpoint_template(args.model_name_or_path), max_length=INFERENCE_MAX_LENGTH
    )
    aligner = remote_aligner_from_flags(args, encoder)
    if aligner is None:
        model = load_model(args, len(tokenizer))
        options = GenerationOptions.from_args(args)
        aligner = LocalAligner(model, tokenizer, encoder.stop_token_ids(), options, args.batch_size)
    service = Service(
        name=args.served_model_name or upstream.model,
        upstream=upstream,
        upstream_concurrency=args.upstream_concurrency,
        encoder=encoder,
        aligner=aligner,
        api_key=api_key,
        limits=args.limits,
    )
    return Plan(args, service)


def execute(plan: Plan[ServeConfig, Service]) -> int:
    import uvicorn

    args, service = plan.config, plan.found
    aligner = args.aligner_url or args.model_name_or_path
    print(
        f"aligner serve: http://{args.host}:{args.port}/v1: replies of {service.upstream.model} "
        f"at {service.upstream.base_url}, corrected by {aligner}",
        flush=True,
    )
    # uvicorn handles SIGTERM and Ctrl-C: it stops listening, lets in-flight requests finish,
    # then runs the app's shutdown, which stops the aligner.
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="info")
    return 0


def main(argv: list[str]) -> int:
    return run_command("aligner serve", argv, ServeConfig.parse, prepare, execute)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
