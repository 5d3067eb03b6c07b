"""Drives `srlm serve` with the official `openai` Python client.

Run by scripts/openai_client_check.sh (which makes the virtual environment) from the test
`the_openai_python_client_streams_from_srlm_serve`:

    python openai_client_check.py BASE_URL MODEL

Streams a greedy chat completion, then asks for the same completion whole and as a plain
completion; prints one JSON object with what it saw, for the test to check.
"""

import json
import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
messages = [{"role": "user", "content": "Name three colours."}]

pieces, roles, finish = [], [], None
usage = None
stream = client.chat.completions.create(
    model=model,
    messages=messages,
    stream=True,
    temperature=0,
    max_tokens=16,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage.completion_tokens
    for choice in chunk.choices:
        if choice.delta.role:
            roles.append(choice.delta.role)
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason

whole = client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=16, n=2
)
models = [m.id for m in client.models.list()]
text = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0)

print(
    json.dumps(
        {
            "openai_version": openai.__version__,
            "chunks": len(pieces),
            "streamed": "".join(pieces),
            "roles": roles,
            "finish_reason": finish,
            "usage_completion_tokens": usage,
            "whole": [c.message.content for c in whole.choices],
            "whole_completion_tokens": whole.usage.completion_tokens,
            "models": models,
            "completion_finish": text.choices[0].finish_reason,
        }
    )
)
