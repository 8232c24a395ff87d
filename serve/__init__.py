"""serve: one engine interface over torch, ONNX Runtime and llama.cpp back ends, an
OpenAI-compatible FastAPI app, and the latency/memory benchmark against LLaVA-1.5-7B.

Not built yet (issue 6).
"""
