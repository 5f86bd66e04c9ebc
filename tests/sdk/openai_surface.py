"""The whole chat completions surface through chatq, with the official `openai` package, unpatched.

Run by tests/api/surface.rs with OPENAI_BASE_URL and OPENAI_API_KEY set for a test chatq whose
provider is the mock LLM, and MOCK_URL the mock's own address: after each request the script
checks that the provider received exactly what the client sent (chatq may only add `stream`,
`stream_options` and resolve the model). Exits non-zero on the first failed check.
"""

import json
import os
import sys
import urllib.request

from openai import DefaultHttpxClient, OpenAI
from pydantic import BaseModel

MOCK_URL = os.environ["MOCK_URL"]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


sent = []


def remember(request):
    if request.url.path.endswith("/chat/completions"):
        sent.append(json.loads(request.read()))


client = OpenAI(max_retries=0, timeout=60, http_client=DefaultHttpxClient(event_hooks={"request": [remember]}))


def mock_requests():
    with urllib.request.urlopen(f"{MOCK_URL}/requests", timeout=10) as response:
        return json.load(response)


def provider_got_what_was_sent(what):
    """The last request the mock received is the last one the SDK sent, but for delivery."""
    received = mock_requests()[-1]["body"]
    client_body = dict(sent[-1])
    for key in ("stream", "stream_options"):
        client_body.pop(key, None)
        received.pop(key, None)
    check(received == client_body, f"the provider received exactly what the client sent ({what})")


# 1. A two-step tool loop, not streamed.
first = client.chat.completions.create(model="mock-model", messages=QUESTION, tools=[WEATHER_TOOL])
provider_got_what_was_sent("tools")
choice = first.choices[0]
check(choice.finish_reason == "tool_calls", "finish_reason is tool_calls")
check(choice.message.content is None, "a reply of only tool calls has no content")
calls = choice.message.tool_calls
check(len(calls) == 1 and calls[0].function.name == "get_weather", "the tool is called")
check(json.loads(calls[0].function.arguments) == {"city": "city example"}, "its arguments are JSON")
check(calls[0].id.startswith("call_"), "the call has the provider's id")
followup = QUESTION + [
    choice.message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny, 21 C"},
]
second = client.chat.completions.create(model="mock-model", messages=followup, tools=[WEATHER_TOOL])
provider_got_what_was_sent("a tool result")
check(second.choices[0].message.content == "Tool results: sunny, 21 C", "the final answer uses the tool result")
check(second.choices[0].finish_reason == "stop", "and stops")

# 2. The same loop, streamed: tool call chunks in order, then the answer.
calls_by_index = {}
finish = None
stream = client.chat.completions.create(model="mock-model", messages=QUESTION, tools=[WEATHER_TOOL], stream=True)
argument_chunks = 0
for chunk in stream:
    for c in chunk.choices:
        for piece in c.delta.tool_calls or []:
            call = calls_by_index.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
            if piece.id:
                call["id"] = piece.id
            if piece.function and piece.function.name:
                call["name"] += piece.function.name
            if piece.function and piece.function.arguments:
                call["arguments"] += piece.function.arguments
                argument_chunks += 1
        finish = c.finish_reason or finish
provider_got_what_was_sent("tools, streamed")
check(argument_chunks > 1, "the arguments stream in several chunks")
check(finish == "tool_calls", "the streamed finish_reason is tool_calls")
check(
    [(c["id"], c["name"], c["arguments"]) for c in calls_by_index.values()]
    == [(calls[0].id, "get_weather", calls[0].function.arguments)],
    "the streamed call is the same call",
)
text = ""
for chunk in client.chat.completions.create(model="mock-model", messages=followup, tools=[WEATHER_TOOL], stream=True):
    for c in chunk.choices:
        text += c.delta.content or ""
check(text == "Tool results: sunny, 21 C", "the streamed final answer uses the tool result")

# 3. Parallel calls and a forced tool choice.
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
both = client.chat.completions.create(model="mock-model", messages=QUESTION, tools=[WEATHER_TOOL, TIME_TOOL])
check([c.function.name for c in both.choices[0].message.tool_calls] == ["get_weather", "get_time"], "parallel tool calls")
forced = client.chat.completions.create(
    model="mock-model",
    messages=QUESTION,
    tools=[WEATHER_TOOL, TIME_TOOL],
    tool_choice={"type": "function", "function": {"name": "get_time"}},
    parallel_tool_calls=False,
)
provider_got_what_was_sent("tool_choice and parallel_tool_calls")
check([c.function.name for c in forced.choices[0].message.tool_calls] == ["get_time"], "tool_choice is followed")


# 4. Structured outputs, parsed by the SDK.
class Weather(BaseModel):
    city: str
    temperature_c: int
    sunny: bool


parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
parsed = parse(model="mock-model", messages=QUESTION, response_format=Weather)
provider_got_what_was_sent("a json_schema response format")
check(sent[-1]["response_format"]["type"] == "json_schema", "the SDK sent a json_schema")
weather = parsed.choices[0].message.parsed
check(weather == Weather(city="city example", temperature_c=1, sunny=True), "the reply parses into the schema")
# A refusal comes instead of content, whole and streamed, as OpenAI sends it.
REFUSE = [{"role": "user", "content": "What is the weather in Paris? (please refuse)"}]
refused = parse(model="mock-model", messages=REFUSE, response_format=Weather).choices[0].message
check(refused.refusal == "I'm sorry, I cannot help with that request.", "a refusal is passed on")
check(refused.content is None and refused.parsed is None, "a refused reply has no content to parse")
schema = sent[-1]["response_format"]
refusal_chunks = [
    c.delta.refusal
    for chunk in client.chat.completions.create(model="mock-model", messages=REFUSE, response_format=schema, stream=True)
    for c in chunk.choices
    if c.delta.refusal
]
check(len(refusal_chunks) > 1 and "".join(refusal_chunks) == refused.refusal, "a refusal streams in pieces")
as_object = client.chat.completions.create(model="mock-model", messages=QUESTION, response_format={"type": "json_object"})
check("answer" in json.loads(as_object.choices[0].message.content), "json_object answers with JSON")

# 5. Several choices, whole and streamed.
three = client.chat.completions.create(model="mock-model", messages=QUESTION, n=3, seed=7, stop=["zzz"], user="u-1")
provider_got_what_was_sent("n, seed, stop, user")
check([c.index for c in three.choices] == [0, 1, 2], "n=3 answers three choices")
contents = [c.message.content for c in three.choices]
check(all(contents) and len(set(contents)) == 3, "each choice has its own text")
streamed = {}
for chunk in client.chat.completions.create(model="mock-model", messages=QUESTION, n=3, seed=7, stop=["zzz"], user="u-1", stream=True):
    for c in chunk.choices:
        streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
check([streamed[i] for i in range(3)] == contents, "streamed choices carry their index and the same text")

# 6. Log probabilities.
with_logprobs = client.chat.completions.create(model="mock-model", messages=QUESTION, logprobs=True, top_logprobs=2)
provider_got_what_was_sent("logprobs")
tokens = with_logprobs.choices[0].logprobs.content
check(len(tokens) > 1, "logprobs come back per token")
check("".join(t.token for t in tokens) == with_logprobs.choices[0].message.content, "the tokens make the content")
check(all(len(t.top_logprobs) == 2 for t in tokens), "with top_logprobs alternatives")
streamed_tokens = []
for chunk in client.chat.completions.create(model="mock-model", messages=QUESTION, logprobs=True, top_logprobs=2, stream=True):
    for c in chunk.choices:
        if c.logprobs and c.logprobs.content:
            streamed_tokens += [t.token for t in c.logprobs.content]
check(streamed_tokens == [t.token for t in tokens], "streamed logprobs are the same")

# 7. Image parts (a data URL and a URL), audio and a file, passed on untouched.
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
image = client.chat.completions.create(
    model="mock-model",
    messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]}],
)
provider_got_what_was_sent("image parts")
check(image.choices[0].message.content, "an image request is answered")
# A second of silence as WAV, and a small PDF, as the SDK's types spell them.
WAV = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA="
PDF = "data:application/pdf;base64,JVBERi0xLjQKJcOkw7zDtsOfCjEgMCBvYmoKPDwvVHlwZS9DYXRhbG9nPj4KZW5kb2JqCnRyYWlsZXIKPDwvUm9vdCAxIDAgUj4+CiUlRU9G"
media = client.chat.completions.create(
    model="mock-model",
    messages=[{"role": "user", "content": [
        {"type": "text", "text": "Transcribe this, then summarise the document."},
        {"type": "input_audio", "input_audio": {"data": WAV, "format": "wav"}},
        {"type": "file", "file": {"filename": "notes.pdf", "file_data": PDF}},
    ]}],
)
provider_got_what_was_sent("audio and file parts")
check(media.choices[0].message.content, "an audio and file request is answered")

# 8. Reasoning parameters and usage details.
reasoning = client.chat.completions.create(model="mock-model", messages=QUESTION, reasoning_effort="low", max_completion_tokens=64)
provider_got_what_was_sent("reasoning_effort, max_completion_tokens")
extra = reasoning.choices[0].message.model_extra or {}
check(extra.get("reasoning_content") == "Thinking it over.", "reasoning text is passed on")
check(reasoning.usage.completion_tokens_details.reasoning_tokens == 3, "reasoning tokens are reported")
check(reasoning.usage.prompt_tokens_details.cached_tokens == 0, "cached tokens are reported")

print("all surface checks passed")
