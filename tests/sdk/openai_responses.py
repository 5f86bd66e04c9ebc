"""The Responses API in background mode through the official `openai` package, unpatched.

Run by tests/api/responses.rs with OPENAI_BASE_URL and OPENAI_API_KEY set for a test chatq whose
provider is the mock LLM (which streams its reply token by token, slowly enough to drop a stream
mid-reply), and EXPECTED_REPLY, the mock's deterministic reply to PROMPT alone. Exits non-zero on
the first failed check.
"""

import os
import sys
import time

import openai
from openai import OpenAI

EXPECTED = os.environ["EXPECTED_REPLY"]
PROMPT = os.environ["PROMPT"]


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def wait_done(client, response_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress"):
            return response
        time.sleep(0.05)
    check(False, f"{response_id} finished within {timeout} s")


client = OpenAI(max_retries=0, timeout=60)

# 1. Background: answered at once, then polled until done.
created = client.responses.create(model="mock-model", input=PROMPT, background=True, metadata={"case": "poll"})
check(created.id.startswith("resp_"), f"the id is a response id ({created.id})")
check(created.status in ("queued", "in_progress"), f"a background response starts queued ({created.status})")
check(created.background is True, "background is true")
done = wait_done(client, created.id)
check(done.status == "completed", f"the response completed ({done.status})")
check(done.output_text == EXPECTED, "its output text is the provider's reply")
check(done.metadata == {"case": "poll"}, "metadata is kept")
check(done.usage is not None and done.usage.output_tokens > 0, "usage is given")

# 2. Streamed in the background, dropped mid-reply, resumed after the last sequence number seen.
first = []
with client.responses.create(model="mock-model", input=PROMPT, background=True, stream=True) as stream:
    for event in stream:
        first.append(event)
        deltas = [e for e in first if e.type == "response.output_text.delta"]
        if len(deltas) >= 3:
            break
response_id = first[0].response.id
check(first[0].type == "response.created", "the stream starts with response.created")
check([e.sequence_number for e in first] == list(range(len(first))), "sequence numbers count from 0")
last_seen = first[-1].sequence_number
text_before = "".join(e.delta for e in first if e.type == "response.output_text.delta")
check(len(text_before) < len(EXPECTED), "the stream was dropped mid-reply")

rest = list(client.responses.retrieve(response_id, stream=True, starting_after=last_seen))
numbers = [e.sequence_number for e in rest]
check(numbers == list(range(last_seen + 1, last_seen + 1 + len(rest))), f"the resumed stream continues at {last_seen + 1} with no gap ({numbers[:3]}…)")
check(rest[-1].type == "response.completed", f"it ends with response.completed ({rest[-1].type})")
text_after = "".join(e.delta for e in rest if e.type == "response.output_text.delta")
check(text_before + text_after == EXPECTED, "the text before and after the drop is the reply, once")
done_events = [e for e in rest if e.type == "response.output_text.done"]
check(len(done_events) == 1 and done_events[0].text == EXPECTED, "output_text.done carries the whole reply")
check(rest[-1].response.output_text == EXPECTED, "the completed response carries the reply")

# The whole stream again, from the start: the same events under the same numbers.
again = list(client.responses.retrieve(response_id, stream=True))
check([e.sequence_number for e in again] == list(range(len(again))), "a replay numbers every event from 0")
check(
    [(e.type, e.sequence_number) for e in again] == [(e.type, e.sequence_number) for e in first + rest],
    "a replay gives the same events under the same numbers",
)

# 3. Cancel: a background response stops; cancelling again answers the same.
slow = client.responses.create(model="mock-model", input=PROMPT + " (to cancel)", background=True)
cancelled = client.responses.cancel(slow.id)
check(cancelled.status == "cancelled", f"a cancelled response says so ({cancelled.status})")
check(client.responses.retrieve(slow.id).status == "cancelled", "and stays cancelled")
check(client.responses.cancel(slow.id).status == "cancelled", "cancelling again is harmless")

# 4. previous_response_id continues the conversation.
one = client.responses.create(model="mock-model", input="My name is Ada.", instructions="Be brief.")
check(one.status == "completed", f"a foreground response waits for its reply ({one.status})")
two = client.responses.create(model="mock-model", input="What is my name?", previous_response_id=one.id)
check(two.status == "completed", "the continuation completed")
check(two.previous_response_id == one.id, "it names the response it continues")
check(two.instructions is None, "instructions are not carried over")

# 5. Input items, then delete.
items = client.responses.input_items.list(two.id)
check([i.content[0].text for i in items.data] == ["What is my name?"], "input_items lists this response's input")
client.responses.delete(one.id)
try:
    client.responses.retrieve(one.id)
    check(False, "a deleted response is gone")
except openai.NotFoundError:
    check(True, "a deleted response is gone (404)")

print(f"RESPONSE_TO_CHECK={two.id}")
print("all Responses checks passed")
