"""eval: benchmark scorers that reproduce the official GQA, ScienceQA, TextVQA, POPE, MME and
MMBench scorers (../shared/eval-spec.md), the evaluation runner, and the exposure-bias and
attention analyses.

    python -m eval score --bench pope ...     # one official scorer on an answer file (eval/score.py)
    python -m eval run --model DIR ...        # answer one benchmark's questions (eval/run.py)
    python -m eval suite --models A B ...     # answer and score several models and benchmarks (eval/suite.py)
    python -m eval exposure ...               # exposure bias: teacher-student KL along the prefixes (eval/exposure.py)
    python -m eval attention ...              # instruction-to-vision attention over the image (eval/attention.py)

Scorers: eval/gqa.py, sqa.py, textvqa.py, pope.py, mme.py, mmbench.py; questions and answer lines in
LLaVA's formats (eval/questions.py, eval/records.py); model back ends: eval/backends.py.
`python -m distill synth` writes the synthetic world's benchmark files in the official formats.
"""
