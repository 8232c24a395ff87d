"""export: the student for edge runtimes.

    python -m export onnx --model DIR --out DIR [--quant none|int8|int4]   # export/onnx_export.py
    python -m export gguf --model DIR --out DIR [--quant f16,q8_0,q4_k_m]  # export/gguf_export.py
    python -m export check --model DIR --export DIR [DIR ...]              # export/check.py
    python -m export bench --model DIR --export DIR [DIR ...]              # export/bench.py

ONNX: vision encoder + projector, token embeddings and a KV-cache decoder (export/onnx_graphs.py),
run by export/onnx_runner.py. GGUF: the language model for llama.cpp (export/gguf_text.py) and the
vision tower + projector as the mmproj file llama.cpp's mtmd loads (export/gguf_vision.py), run by
export/gguf_runner.py.
"""
