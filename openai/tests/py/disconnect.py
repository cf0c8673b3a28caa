"""Starts a long stream, reads a few chunks, closes the connection (CLOSED),
and exits; the Rust test checks the supervisor cancelled the request."""

import json

from openai import OpenAI

client = OpenAI(max_retries=0, timeout=180)
stream = client.chat.completions.create(
    model="auto", temperature=0, max_tokens=400,
    messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
    stream=True,
)
got = 0
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        got += 1
        if got == 3:
            break
stream.close()
print("CLOSED", flush=True)
print(json.dumps({"chunks": got}))
