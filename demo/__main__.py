"""`python -m demo`: the Gradio image chat over a model in this process, or over a running server.

    python -m demo --model runs/tiny/student-kd/final                 # open http://127.0.0.1:7860
    python -m demo --model exports/student-kd-gguf --quant q4_k_m      # llama.cpp in process
    python -m demo --api-url http://127.0.0.1:8000/v1 --api-key secret # a running `python -m serve`

Examples from the synthetic world's held-out split are preloaded when data/shapes exists (the tiny
default's quickstart makes it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serve.engines import BACKENDS, DTYPES, add_cuda_graphs_argument


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model", type=Path, help="a checkpoint folder or an ONNX / GGUF export, run in process"
    )
    source.add_argument("--api-url", help="a running `python -m serve`, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", help="the server's key, with --api-url")
    parser.add_argument("--backend", choices=BACKENDS, help="with --model (default: what the folder holds)")
    parser.add_argument("--quant", help="which file of a GGUF export")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="with a checkpoint: its precision (default: as saved)"
    )
    add_cuda_graphs_argument(parser)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument(
        "--examples", type=Path, default=Path("data/shapes/test.json"), help="held-out records"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from openai import APIError

    from demo.app import build_demo, synthetic_examples
    from demo.chat import ApiChat, LocalChat

    try:
        if args.api_url:
            backend = ApiChat(args.api_url, args.api_key, args.max_tokens)
        else:
            from serve.engines import open_engine

            backend = LocalChat(
                open_engine(
                    args.model, args.backend, args.quant, dtype=args.dtype, cuda_graphs=args.cuda_graphs
                ),
                args.max_tokens,
            )
    except (FileNotFoundError, ValueError, APIError) as error:  # APIError: a server down or a wrong key
        print(f"demo: {error}", file=sys.stderr)
        return 2
    demo = build_demo(backend, synthetic_examples(args.examples))
    print(f"image chat with {backend.name} on http://{args.host}:{args.port}", flush=True)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
