"""export: ONNX (vision encoder + projector, embeddings, decoder with KV cache) and GGUF (LLM +
mmproj) exports with int8/int4 and llama.cpp quantization, and parity checks against PyTorch.

Not built yet (issue 5).
"""
