"""eval: benchmark scorers that reproduce the official GQA, ScienceQA, TextVQA, POPE, MME and
MMBench scorers, the evaluation runner, and the exposure-bias and attention analyses.

Not built yet (issue 4). Until then `python -m distill heldout` scores the synthetic held-out split,
and `python -m distill synth` already writes the benchmark files these scorers will read.
"""
