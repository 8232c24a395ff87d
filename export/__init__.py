"""export: the student for edge runtimes.

    python -m export onnx --model DIR --out DIR [--quant none|int8|int4]   # export/onnx_export.py
    python -m export check --model DIR --export DIR [DIR ...]              # export/check.py

ONNX: vision encoder + projector, token embeddings and a KV-cache decoder (export/onnx_graphs.py),
run by export/onnx_runner.py. GGUF (llama.cpp) is still to come (issue 5).
"""
