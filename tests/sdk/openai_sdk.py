"""The official `openai` package, unpatched, pointed at chatq with base_url.

Run by tests/api/completions.rs with OPENAI_BASE_URL and OPENAI_API_KEY set for a test chatq
whose provider is the mock LLM, and EXPECTED_REPLY / EXPECTED_PROMPT_TOKENS computed from the
mock's deterministic replies. Exits non-zero on the first failed check.
"""

import os
import sys

import openai
from openai import OpenAI

EXPECTED = os.environ["EXPECTED_REPLY"]
PROMPT_TOKENS = int(os.environ["EXPECTED_PROMPT_TOKENS"])
MESSAGES = [{"role": "user", "content": "Say hi from the SDK"}]


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


client = OpenAI(max_retries=0, timeout=60)

# Non-streaming, with the raw response to see chatq's job header.
raw = client.chat.completions.with_raw_response.create(model="mock-model", messages=MESSAGES, temperature=0)
completion = raw.parse()
check(raw.headers.get("x-chatq-job-id", "").startswith("job_"), "the job id is in x-chatq-job-id")
check(completion.object == "chat.completion", "object is chat.completion")
check(completion.id.startswith("chatcmpl-"), "id starts with chatcmpl-")
check(completion.choices[0].message.role == "assistant", "the reply is the assistant's")
check(completion.choices[0].message.content == EXPECTED, "content is the provider's reply")
check(completion.choices[0].finish_reason == "stop", "finish_reason is stop")
check(completion.usage.prompt_tokens == PROMPT_TOKENS, "usage.prompt_tokens")
check(completion.usage.completion_tokens == 12, "usage.completion_tokens")
check(completion.usage.total_tokens == PROMPT_TOKENS + 12, "usage.total_tokens")

# Streaming, with usage in the last chunk.
stream = client.chat.completions.create(
    model="mock-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
)
text, finish_reason, usage, chunks = "", None, None, 0
for chunk in stream:
    chunks += 1
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
        finish_reason = chunk.choices[0].finish_reason or finish_reason
    if chunk.usage:
        usage = chunk.usage
check(chunks >= 3, f"the reply streamed in several chunks ({chunks})")
check(text == EXPECTED, "streamed text equals the whole reply")
check(finish_reason == "stop", "streamed finish_reason is stop")
check(usage is not None and usage.completion_tokens == 12, "usage arrives in the last chunk")

# Models.
ids = [model.id for model in client.models.list()]
check("mock-model" in ids, f"models.list includes mock-model ({ids})")

# Errors come back as the SDK's typed exceptions, with the parameter named.
try:
    client.chat.completions.create(model="mock-model", messages=MESSAGES, extra_body={"top_k": 5})
    check(False, "an unknown parameter is refused")
except openai.BadRequestError as error:
    check(error.status_code == 400, "an unknown parameter is a 400")
    check(error.param == "top_k", f"the error names the parameter ({error.param})")
    check(error.code == "unsupported_parameter", f"the error code says why ({error.code})")

try:
    OpenAI(max_retries=0, api_key="cq_" + "0" * 48).models.list()
    check(False, "an unknown key is refused")
except openai.AuthenticationError as error:
    check(error.status_code == 401, "an unknown key is a 401 AuthenticationError")

print("all SDK checks passed")
