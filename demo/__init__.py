"""demo: a Gradio image chat on top of serve's engines (`python -m demo --model PATH`).

Not built yet (issue 6).
"""
