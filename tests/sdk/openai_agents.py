"""An agent framework from PyPI (`openai-agents`) with chatq as its OpenAI client: a tool-using
agent runs to completion.

Run by tests/api/surface.rs with OPENAI_BASE_URL and OPENAI_API_KEY set for a test chatq whose
provider is the mock LLM (which calls the first tool offered, then answers with the tool's
result). Exits non-zero on the first failed check.
"""

import os
import sys

from agents import (
    Agent,
    Runner,
    function_tool,
    set_default_openai_api,
    set_default_openai_client,
    set_tracing_disabled,
)
from openai import AsyncOpenAI


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


client = AsyncOpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ["OPENAI_API_KEY"], max_retries=0)
set_default_openai_client(client, use_for_tracing=False)
set_default_openai_api("chat_completions")
set_tracing_disabled(True)

asked = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    asked.append(city)
    return f"sunny in {city}"


agent = Agent(
    name="Weather assistant",
    instructions="Answer questions about the weather using the tool.",
    tools=[get_weather],
    model="mock-model",
)
result = Runner.run_sync(agent, "What is the weather in Paris?")
check(asked == ["city example"], "the agent called its tool once, with the model's arguments")
check(result.final_output == "Tool results: sunny in city example", "the agent finished with the tool's result")
print("all agent checks passed")
