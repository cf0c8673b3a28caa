"""The official openai client against the board: models, a completion
streamed and not, the auto model, an unknown model, a wrong key, max_tokens
and stop strings. Prints one JSON line of results for the Rust test."""

import json
import os

import openai
from openai import OpenAI

client = OpenAI(max_retries=0, timeout=120)

models = client.models.list()
ids = [m.id for m in models.data]
assert ids, "no models listed"
owners = [m.owned_by for m in models.data]
assert all(o in ("cpu", "npu", "npu,cpu", "cpu,npu") for o in owners), owners
model = ids[0]
assert client.models.retrieve(model).id == model

messages = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": [{"type": "text", "text": "Name the colours of the rainbow."}]},
]

# Non-streamed.
r = client.chat.completions.create(model=model, messages=messages, max_tokens=40, temperature=0)
full = r.choices[0].message.content
assert r.object == "chat.completion"
assert r.choices[0].message.role == "assistant"
assert full, "empty answer"
assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, r.usage
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

# Streamed, with the usage chunk: the same greedy text.
stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=40, temperature=0,
    stream=True, stream_options={"include_usage": True},
)
parts, finish, stream_usage, roles = [], None, None, []
for chunk in stream:
    assert chunk.object == "chat.completion.chunk"
    if chunk.usage is not None:
        stream_usage = chunk.usage
    if chunk.choices:
        delta = chunk.choices[0].delta
        if delta.role:
            roles.append(delta.role)
        if delta.content:
            parts.append(delta.content)
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
streamed = "".join(parts)
assert streamed == full, (streamed, full)
assert roles == ["assistant"], roles
assert finish == r.choices[0].finish_reason, (finish, r.choices[0].finish_reason)
assert stream_usage is not None, "no usage chunk"
assert (stream_usage.prompt_tokens, stream_usage.completion_tokens) == (
    r.usage.prompt_tokens, r.usage.completion_tokens), (stream_usage, r.usage)

# "auto" lets the supervisor route.
auto = client.chat.completions.create(model="auto", messages=messages, max_tokens=40, temperature=0)
assert auto.choices[0].message.content == full

# An unknown model is a 404 in OpenAI's shape.
try:
    client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=5)
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404
    assert e.code == "model_not_found", e.body

# A wrong key is a 401.
try:
    OpenAI(api_key="sk-wrong-wrong-wrong-wrong", max_retries=0).chat.completions.create(
        model=model, messages=messages, max_tokens=5)
    raise AssertionError("wrong key accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401

# max_tokens is respected, and says "length".
short = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=5, temperature=0)
assert short.usage.completion_tokens <= 5, short.usage
assert short.choices[0].finish_reason == "length", short.choices[0].finish_reason
assert full.startswith(short.choices[0].message.content), (short.choices[0].message.content, full)

# n other than 1 is refused, naming the field.
try:
    client.chat.completions.create(model=model, messages=messages, max_tokens=5, n=2)
    raise AssertionError("n=2 accepted")
except openai.BadRequestError as e:
    assert e.param == "n", e.body

# Stop strings: the answer ends before the stop text, streamed or not.
mid = len(full) // 2
stop = full[mid:mid + 3]
expected = full[: full.find(stop)]
stopped = client.chat.completions.create(
    model=model, messages=messages, max_tokens=40, temperature=0, stop=[stop, "\u2603never"])
assert stopped.choices[0].message.content == expected, (stopped.choices[0].message.content, expected, stop)
assert stopped.choices[0].finish_reason == "stop"
# The supervisor's figures still come after a stop string ends the answer.
assert stopped.usage.prompt_tokens == r.usage.prompt_tokens, (stopped.usage, r.usage)
assert 0 < stopped.usage.completion_tokens < r.usage.completion_tokens, (stopped.usage, r.usage)
parts = []
finish = None
stop_usage = None
for chunk in client.chat.completions.create(
        model=model, messages=messages, max_tokens=40, temperature=0, stop=stop, stream=True,
        stream_options={"include_usage": True}):
    if chunk.usage is not None:
        stop_usage = chunk.usage
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
    if chunk.choices and chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
assert "".join(parts) == expected, ("".join(parts), expected)
assert finish == "stop"
assert stop_usage is not None and stop_usage.prompt_tokens == r.usage.prompt_tokens, stop_usage

print(json.dumps({
    "model": model,
    "text": full,
    "prompt_tokens": r.usage.prompt_tokens,
    "completion_tokens": r.usage.completion_tokens,
    "finish_reason": r.choices[0].finish_reason,
}))
