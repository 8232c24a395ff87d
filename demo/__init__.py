"""demo: a Gradio image chat on top of serve's engines, or of a running server.

    python -m demo --model runs/tiny/student-kd/final       # demo/__main__.py
    python -m demo --api-url http://127.0.0.1:8000/v1

The Blocks app: demo/app.py; the chat turns against an engine or the API: demo/chat.py.
"""
