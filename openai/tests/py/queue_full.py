"""Fills the supervisor's queue (one running, one waiting), checks a third
request gets 429 with Retry-After, then that the client's own retries succeed."""

import json
import threading

import openai
from openai import OpenAI

messages = [{"role": "user", "content": "Count from one to fifty in words."}]
client = OpenAI(max_retries=0, timeout=180)

running = client.chat.completions.create(model="auto", messages=messages, max_tokens=40, temperature=0, stream=True)
it_running = iter(running)
next(it_running)  # the role chunk: the request is under way
waiting = client.chat.completions.create(model="auto", messages=messages, max_tokens=40, temperature=0, stream=True)

status, retry_after, message = None, None, None
try:
    client.chat.completions.create(model="auto", messages=messages, max_tokens=5)
except openai.RateLimitError as e:
    status = e.status_code
    retry_after = e.response.headers.get("retry-after")
    message = e.message
assert status == 429, status
assert retry_after is not None and int(retry_after) >= 1, retry_after

def drain(it):
    for _ in it:
        pass

threads = [threading.Thread(target=drain, args=(it_running,)), threading.Thread(target=drain, args=(waiting,))]
for t in threads:
    t.start()

# The client's own retry logic honours Retry-After until the queue has room.
retried = OpenAI(max_retries=10, timeout=180).chat.completions.with_raw_response.create(
    model="auto", messages=messages, max_tokens=5, temperature=0)
answer = retried.parse()
assert answer.choices[0].message.content, "empty answer after retrying"
for t in threads:
    t.join()
print(json.dumps({"status": status, "retry_after": retry_after, "message": message,
                  "retries_taken": retried.retries_taken}))
