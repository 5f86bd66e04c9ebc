"""The Files and Batch APIs through chatq, with the official `openai` package, unpatched.

Run by tests/api/batches.rs with OPENAI_BASE_URL and OPENAI_API_KEY set for a test chatq whose
provider is the mock LLM. Uploads a file of good and bad lines mixed, starts a batch, polls it until
it ends, then downloads the output and error files: every good line answered exactly once, every
bad line in the error file with the 400 chat completions would have answered. Prints the custom ids
it expects answered (GOOD=…) for the test to check against the provider. Exits non-zero on the first
failed check.
"""

import json
import sys
import time

from openai import OpenAI

GOOD = [f"good-{i}" for i in range(24)]
BAD = {
    "bad-temperature": {"temperature": 7},
    "bad-no-messages": {"messages": []},
    "bad-unknown-parameter": {"frobnicate": True},
}


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def line(custom_id, extra=None):
    body = {"model": "mock-model", "messages": [{"role": "user", "content": f"Answer {custom_id}"}]}
    body.update(extra or {})
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


client = OpenAI(max_retries=0, timeout=60)

lines = [line(custom_id) for custom_id in GOOD]
# Bad lines among the good ones, not at the end.
for offset, (custom_id, extra) in enumerate(BAD.items()):
    lines.insert(5 + 7 * offset, line(custom_id, extra))
data = "".join(json.dumps(entry) + "\n" for entry in lines).encode()

uploaded = client.files.create(file=("requests.jsonl", data), purpose="batch")
check(uploaded.purpose == "batch" and uploaded.bytes == len(data), "the upload is a batch file of the bytes sent")
check(client.files.retrieve(uploaded.id).id == uploaded.id, "the upload can be retrieved")
check(client.files.content(uploaded.id).content == data, "the upload's content is the bytes sent")
check(any(f.id == uploaded.id for f in client.files.list(purpose="batch")), "the upload is listed")

batch = client.batches.create(
    input_file_id=uploaded.id,
    endpoint="/v1/chat/completions",
    completion_window="24h",
    metadata={"run": "sdk"},
)
check(batch.status == "validating", f"a new batch is validated after it is answered ({batch.status})")
check(batch.metadata == {"run": "sdk"}, "metadata comes back")

deadline = time.monotonic() + 60
while batch.status not in ("completed", "failed", "expired", "cancelled"):
    check(time.monotonic() < deadline, "the batch ends within a minute")
    time.sleep(0.2)
    batch = client.batches.retrieve(batch.id)
check(batch.status == "completed", f"the batch completed ({batch.status}, errors {batch.errors})")
counts = batch.request_counts
check(
    (counts.total, counts.completed, counts.failed) == (len(lines), len(GOOD), len(BAD)),
    f"request_counts add up ({counts})",
)
check(batch.completed_at and batch.in_progress_at and batch.finalizing_at, "the timestamps of a completed batch are set")
check(batch.model == "mock-model", f"the batch names the model its lines ask for ({batch.model})")
check(batch.usage is not None and batch.usage.output_tokens > 0, "usage counts the answers' tokens")

output = [json.loads(text) for text in client.files.content(batch.output_file_id).text.splitlines()]
answered = [entry["custom_id"] for entry in output]
check(sorted(answered) == sorted(GOOD), "every good line is answered exactly once")
for entry in output:
    response = entry["response"]
    check(
        response["status_code"] == 200
        and response["request_id"]
        and entry["id"]
        and entry["error"] is None
        and response["body"]["object"] == "chat.completion"
        and response["body"]["choices"][0]["message"]["content"],
        f"{entry['custom_id']} is answered with a chat completion",
    )

errors = [json.loads(text) for text in client.files.content(batch.error_file_id).text.splitlines()]
check(sorted(entry["custom_id"] for entry in errors) == sorted(BAD), "every bad line is in the error file, once")
for entry in errors:
    response = entry["response"]
    check(
        response["status_code"] == 400 and response["body"]["error"]["type"] == "invalid_request_error",
        f"{entry['custom_id']} is refused as chat completions would refuse it",
    )

check(any(b.id == batch.id for b in client.batches.list(limit=10)), "the batch is listed")
check(client.files.retrieve(batch.output_file_id).purpose == "batch_output", "the output file is a batch_output file")
deleted = client.files.delete(uploaded.id)
check(deleted.deleted, "the upload can be deleted")
print("GOOD=" + ",".join(GOOD))
print("all batch SDK checks passed")
