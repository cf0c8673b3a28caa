"""A streamed completion whose worker the Rust test kills with SIGKILL after
KILL is printed: the stream must complete without an exception."""

import json

from openai import OpenAI

client = OpenAI(max_retries=0, timeout=180)
stream = client.chat.completions.create(
    model="auto", temperature=0, max_tokens=120,
    messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
    stream=True,
)
parts, finish, prefix, n = [], None, None, 0
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
        n += 1
        if n == 10:
            prefix = "".join(parts)
            print("KILL", flush=True)
    if chunk.choices and chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
text = "".join(parts)
assert prefix is not None, "the stream ended before the kill"
assert finish in ("stop", "length"), finish
print(json.dumps({"text": text, "prefix": prefix, "finish": finish}))
