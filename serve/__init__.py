"""serve: one engine interface over torch, ONNX Runtime and llama.cpp back ends, an
OpenAI-compatible FastAPI app, and the latency/memory benchmark against LLaVA-1.5-7B.

    python -m serve --model runs/tiny/student-kd/final     # the API on uvicorn (serve/__main__.py)
    python -m serve bench --models A B ...                # TTFT, decode speed, memory (serve/bench.py)

Engines: serve/engines.py, the torch one in serve/torch_engine.py (CUDA graphs on GPUs:
serve/graphed_decoding.py), their text side in serve/chat_text.py (a GGUF export needs no torch); the app and
its limits: serve/app.py, serve/protocol.py, serve/images.py, serve/errors.py; one completion's stop
strings and timings: serve/generation.py; sampling: serve/sampling.py; Prometheus: serve/metrics.py.
"""
