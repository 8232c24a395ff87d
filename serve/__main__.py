"""`python -m serve`: the OpenAI-compatible API over a checkpoint or an export, on uvicorn.

    python -m serve --model runs/tiny/student-kd/final                       # torch
    python -m serve --model exports/student-kd-gguf --quant q4_k_m --port 8001  # llama.cpp
    python -m serve --model exports/student-kd-onnx-int4 --api-key secret      # ONNX Runtime
    python -m serve bench --models A B ...                                    # see serve/bench.py

The back end follows from the folder (a checkpoint, an ONNX export, a GGUF export); --backend
names it explicitly and refuses a folder of another kind. Then, with the official client:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")
    client.chat.completions.create(model="student-kd", messages=[...], stream=True)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from serve.engines import BACKENDS, DTYPES, add_cuda_graphs_argument

if TYPE_CHECKING:
    from serve.app import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, type=Path, help="a checkpoint folder or an ONNX / GGUF export"
    )
    parser.add_argument("--backend", choices=BACKENDS, help="default: what the folder holds")
    parser.add_argument("--quant", help="which file of a GGUF export (default: its first, e.g. f16)")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="torch back end: the weights' precision (default: as the checkpoint was saved)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads for the engine (default: the runtime's)")
    add_cuda_graphs_argument(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="require Authorization: Bearer KEY (default: no key)")
    parser.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs")
    parser.add_argument("--allow-local-images", action="store_true", help="read file:// image URLs")
    parser.add_argument("--max-request-bytes", type=int, default=20 * 2**20)
    parser.add_argument("--max-image-bytes", type=int, default=10 * 2**20)
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096)
    parser.add_argument(
        "--max-images",
        type=int,
        default=1,
        help="images per request (every back end reads several, in order)",
    )
    parser.add_argument("--max-tokens-cap", type=int, default=1024, help="largest max_tokens accepted")
    parser.add_argument("--max-queue", type=int, default=16, help="requests waiting beyond the running one")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    from serve.app import Settings
    from serve.images import ImageLimits

    return Settings(
        api_key=args.api_key,
        max_request_bytes=args.max_request_bytes,
        images=ImageLimits(
            args.max_image_bytes, args.max_image_pixels, args.allow_remote_images, args.allow_local_images
        ),
        max_images=args.max_images,
        max_tokens_cap=args.max_tokens_cap,
        max_queue=args.max_queue,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return bench(argv[1:])
    args = build_parser().parse_args(argv)
    import uvicorn

    from serve.app import create_app
    from serve.engines import open_engine

    try:
        engine = open_engine(args.model, args.backend, args.quant, args.threads, args.dtype, args.cuda_graphs)
    except (FileNotFoundError, ValueError) as error:
        print(f"serve: {error}", file=sys.stderr)
        return 2
    print(f"serving {engine.name} ({engine.description}) on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(create_app(engine, settings_from(args)), host=args.host, port=args.port, log_level="warning")
    return 0


def bench(argv: list[str]) -> int:
    from serve import bench as module

    parser = argparse.ArgumentParser(
        prog="python -m serve bench", description=module.__doc__.split("\n\n")[0]
    )
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return module.run(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"serve bench: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
