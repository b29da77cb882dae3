"""A terminal chat with Hindsight through the official `openai` SDK, streamed token by token.

    hindsight serve --model DIR            # in another terminal
    python examples/python_chat.py         # HINDSIGHT_BASE_URL / HINDSIGHT_API_KEY to override

Every turn carries one X-Session-Id so Hindsight links the conversation; /bye ends it with
X-Session-Done: true.
"""

import os
import sys
import uuid

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("HINDSIGHT_BASE_URL", "http://127.0.0.1:8080/v1"),
    api_key=os.environ.get("HINDSIGHT_API_KEY", "none"),
)
model = os.environ.get("HINDSIGHT_MODEL") or client.models.list().data[0].id
session = str(uuid.uuid4())
messages = [{"role": "system", "content": "You are a helpful assistant."}]
print(f"chatting with {model} (session {session}); /bye to quit")

while True:
    try:
        text = input("you> ").strip()
    except EOFError:
        text = "/bye"
    done = text == "/bye"
    if done:
        text = "Goodbye!"
    if not text:
        continue
    messages.append({"role": "user", "content": text})
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        stream=True,
        temperature=0.7,
        max_tokens=512,
        extra_headers={"X-Session-Id": session, "X-Session-Done": "true" if done else "false"},
    )
    reply = []
    sys.stdout.write("assistant> ")
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            reply.append(chunk.choices[0].delta.content)
            sys.stdout.write(chunk.choices[0].delta.content)
            sys.stdout.flush()
    print()
    messages.append({"role": "assistant", "content": "".join(reply)})
    if done:
        break
