"""Shared set-up for the Python client suites in tests/sdk (structured output, tools, logit_bias,
the Responses API, LangChain, the OpenAI Agents SDK).

Environment (the same as test_openai_python.py):
  HINDSIGHT_BASE_URL  e.g. http://127.0.0.1:8080/v1 (required)
  HINDSIGHT_API_KEY   the key to send (default "none")
  HINDSIGHT_MODEL     the model id (default: the first of models.list())

The default model (SmolLM2-135M-Instruct) answers poorly: these tests assert the protocol and
validity (JSON parses, schemas validate, event order, ids, round trips), never answer quality.

Run them all in one process (as tests/sdk_default_model.rs does):
  .venv/bin/python -m unittest discover -v -s tests/sdk -p 'test_*.py'
"""

import functools
import json
import os
import sys
import time
import unittest

import jsonschema
import openai

BASE_URL = os.environ["HINDSIGHT_BASE_URL"]
API_KEY = os.environ.get("HINDSIGHT_API_KEY", "none")

# Small schemas with bounded strings and numbers, so that a valid document always fits in the
# token budgets below.
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 24},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 32},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}

TIME_PARAMETERS = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 32}},
    "required": ["timezone"],
    "additionalProperties": False,
}

# Chat Completions tool definitions.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER_PARAMETERS,
        "strict": True,
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone",
        "parameters": TIME_PARAMETERS,
        "strict": True,
    },
}
CHAT_TOOL_PARAMETERS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}

# Responses API tool definitions (flat).
RESPONSES_WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": WEATHER_PARAMETERS,
    "strict": True,
}
RESPONSES_TIME_TOOL = {
    "type": "function",
    "name": "get_time",
    "description": "Current time in a timezone",
    "parameters": TIME_PARAMETERS,
    "strict": True,
}


def client(**kwargs):
    options = {"base_url": BASE_URL, "api_key": API_KEY, "max_retries": 0, "timeout": 180}
    options.update(kwargs)
    return openai.OpenAI(**options)


def async_client(**kwargs):
    options = {"base_url": BASE_URL, "api_key": API_KEY, "max_retries": 0, "timeout": 180}
    options.update(kwargs)
    return openai.AsyncOpenAI(**options)


@functools.lru_cache(maxsize=None)
def model_id():
    return os.environ.get("HINDSIGHT_MODEL") or client().models.list().data[0].id


def validate(instance, schema):
    """jsonschema validation with the document in the failure message."""
    try:
        jsonschema.validate(instance, schema)
    except jsonschema.ValidationError as err:
        raise AssertionError(f"{json.dumps(instance)} is not valid: {err.message}") from None


class TimedCase(unittest.TestCase):
    """Prints each test's wall time to stderr (the CI budget is tight; keep an eye on it)."""

    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.client = client()
        cls.model = model_id()

    def setUp(self):
        self._started = time.monotonic()

    def tearDown(self):
        print(f"  [{time.monotonic() - self._started:5.1f}s] {self.id()}", file=sys.stderr)

    def assert_json_object(self, text, what="content"):
        self.assertIsInstance(text, str, f"{what} is not a string")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            self.fail(f"{what} is not JSON ({err}): {text!r}")
        self.assertIsInstance(value, dict, f"{what} is not a JSON object: {text!r}")
        return value
