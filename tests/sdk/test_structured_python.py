"""Structured output, forced tool calls and logit_bias on /v1/chat/completions with the official
`openai` Python SDK. The constraints are enforced while sampling, so even the tiny default model
must produce valid JSON / valid calls every time. See sdk_common.py for the environment.
"""

import json
import unittest

import openai
from pydantic import BaseModel, Field

from sdk_common import (
    CHAT_TOOL_PARAMETERS,
    PERSON_SCHEMA,
    TIME_TOOL,
    WEATHER_PARAMETERS,
    WEATHER_TOOL,
    TimedCase,
    validate,
)

# Prompts the tiny model closes within the budget under a json_object mask (a free-form object
# can ramble on forever: that is the model, not the constraint).
JSON_PROMPTS = [
    "Give me a JSON object describing a person named Alice who is 30 and lives in Paris.",
    "Return a JSON object with your favourite colour.",
    'Reply with a JSON object like {"answer": "yes"}: is the sky blue?',
    'What is 2+2? Answer as a JSON object with the key "result".',
    'Describe a cat as a JSON object with the keys "name" and "colour".',
]

PERSON_PROMPTS = [
    "Alice is 30 and lives in Paris. Extract her details.",
    "Invent a person.",
    "Bob, 45, from Lyon.",
    "Describe a famous scientist.",
    "Who are you?",
]

TOOL_PROMPTS = [
    "What is the weather in Paris right now?",
    "Tell me a joke.",
    "Is it raining in Tokyo?",
]


class Person(BaseModel):
    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=120)
    city: str = Field(max_length=24)


class GetWeather(BaseModel):
    """Current weather in a city"""

    city: str = Field(max_length=32)


def person_format(strict):
    return {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": strict},
    }


def collect_stream(stream):
    """Reassembles a streamed chat completion: content, tool calls by index, finish reason."""
    content, calls, finish, chunks = "", {}, None, 0
    for chunk in stream:
        chunks += 1
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                content += delta.content
            for call in delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                if call.id:
                    entry["id"] = call.id
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
            if choice.finish_reason:
                finish = choice.finish_reason
    return content, [calls[i] for i in sorted(calls)], finish, chunks


class ResponseFormat(TimedCase):
    def chat(self, prompt, **kwargs):
        options = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 96,
            "temperature": 0,
        }
        options.update(kwargs)
        return self.client.chat.completions.create(**options)

    def test_json_object_five_of_five(self):
        for prompt in JSON_PROMPTS:
            with self.subTest(prompt=prompt):
                completion = self.chat(prompt, response_format={"type": "json_object"})
                choice = completion.choices[0]
                self.assertEqual(choice.finish_reason, "stop", choice.message.content)
                self.assert_json_object(choice.message.content)

    def test_json_object_streamed(self):
        stream = self.chat(JSON_PROMPTS[0], response_format={"type": "json_object"}, stream=True)
        content, calls, finish, chunks = collect_stream(stream)
        self.assertEqual(finish, "stop", content)
        self.assertEqual(calls, [])
        self.assertGreater(chunks, 1)
        self.assert_json_object(content)

    def test_json_object_sampled(self):
        # Not greedy: the mask, not luck, keeps the output valid.
        completion = self.chat(JSON_PROMPTS[2], response_format={"type": "json_object"},
                               temperature=0.8, seed=5)
        self.assertEqual(completion.choices[0].finish_reason, "stop", completion.choices[0].message.content)
        self.assert_json_object(completion.choices[0].message.content)

    def test_json_schema_strict_five_of_five(self):
        for prompt in PERSON_PROMPTS:
            with self.subTest(prompt=prompt):
                completion = self.chat(prompt, response_format=person_format(True))
                choice = completion.choices[0]
                self.assertEqual(choice.finish_reason, "stop", choice.message.content)
                validate(self.assert_json_object(choice.message.content), PERSON_SCHEMA)

    def test_json_schema_strict_streamed(self):
        whole = self.chat(PERSON_PROMPTS[0], response_format=person_format(True))
        content, _, finish, _ = collect_stream(
            self.chat(PERSON_PROMPTS[0], response_format=person_format(True), stream=True))
        self.assertEqual(finish, "stop", content)
        validate(self.assert_json_object(content), PERSON_SCHEMA)
        self.assertEqual(content, whole.choices[0].message.content, "greedy: streamed == not streamed")

    def test_json_schema_not_strict(self):
        completion = self.chat(PERSON_PROMPTS[1], response_format=person_format(False))
        choice = completion.choices[0]
        self.assertEqual(choice.finish_reason, "stop", choice.message.content)
        validate(self.assert_json_object(choice.message.content), PERSON_SCHEMA)

    def test_parse_pydantic(self):
        completion = self.client.chat.completions.parse(
            model=self.model,
            messages=[{"role": "user", "content": PERSON_PROMPTS[0]}],
            response_format=Person,
            max_tokens=160,
            temperature=0,
        )
        message = completion.choices[0].message
        self.assertIsNotNone(message.parsed, message.content)
        self.assertIsInstance(message.parsed, Person)
        self.assertEqual(message.parsed, Person.model_validate_json(message.content))

    def test_parse_pydantic_streamed(self):
        with self.client.chat.completions.stream(
            model=self.model,
            messages=[{"role": "user", "content": PERSON_PROMPTS[2]}],
            response_format=Person,
            max_tokens=160,
            temperature=0,
        ) as stream:
            saw_content = False
            for event in stream:
                if event.type == "content.delta":
                    saw_content = True
            final = stream.get_final_completion()
        self.assertTrue(saw_content)
        message = final.choices[0].message
        self.assertIsInstance(message.parsed, Person, message.content)

    def test_bad_response_format(self):
        with self.assertRaises(openai.BadRequestError) as caught:
            self.chat("hi", response_format={"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "no-such-type"}, "strict": True}})
        self.assertEqual(caught.exception.status_code, 400)
        with self.assertRaises(openai.BadRequestError):
            self.chat("hi", response_format={"type": "xml"})


class ToolChoice(TimedCase):
    def chat(self, prompt, **kwargs):
        options = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "tools": [WEATHER_TOOL, TIME_TOOL],
            "max_tokens": 128,
            "temperature": 0,
        }
        options.update(kwargs)
        return self.client.chat.completions.create(**options)

    def check_calls(self, choice, name=None):
        self.assertEqual(choice.finish_reason, "tool_calls", choice.message.content)
        calls = choice.message.tool_calls
        self.assertTrue(calls, "no tool call")
        self.assertFalse(choice.message.content, "a forced call has no prose")
        for call in calls:
            self.assertTrue(call.id.startswith("call_"), call.id)
            self.assertEqual(call.type, "function")
            self.assertIn(call.function.name, CHAT_TOOL_PARAMETERS)
            if name is not None:
                self.assertEqual(call.function.name, name)
            args = self.assert_json_object(call.function.arguments, "arguments")
            validate(args, CHAT_TOOL_PARAMETERS[call.function.name])
        return calls

    def test_required_and_named_six_times(self):
        for prompt in TOOL_PROMPTS:
            with self.subTest(tool_choice="required", prompt=prompt):
                choice = self.chat(prompt, tool_choice="required", parallel_tool_calls=False).choices[0]
                self.assertEqual(len(self.check_calls(choice)), 1, "parallel_tool_calls=false: one call")
            with self.subTest(tool_choice="get_time", prompt=prompt):
                named = {"type": "function", "function": {"name": "get_time"}}
                choice = self.chat(prompt, tool_choice=named, parallel_tool_calls=False).choices[0]
                self.assertEqual(len(self.check_calls(choice, "get_time")), 1)

    def test_parallel_calls_allowed(self):
        # The tiny model repeats its call until the budget ends; every complete call is returned,
        # and no tool-call markup leaks into the content.
        prompt = "What is the weather in Paris, in London and in Rome?"
        completion = self.chat(prompt, tool_choice="required", max_tokens=96)
        choice = completion.choices[0]
        self.assertIn(choice.finish_reason, ("tool_calls", "length"))
        self.assertFalse(choice.message.content, "no prose (nor partial <tool_call> markup) beside forced calls")
        self.assertTrue(choice.message.tool_calls)
        for call in choice.message.tool_calls:
            validate(self.assert_json_object(call.function.arguments, "arguments"),
                     CHAT_TOOL_PARAMETERS[call.function.name])
        self.assertEqual(len({c.id for c in choice.message.tool_calls}), len(choice.message.tool_calls))

    def test_required_streamed_matches_not_streamed(self):
        prompt = TOOL_PROMPTS[0]
        options = {"tool_choice": "required", "parallel_tool_calls": False}
        whole = self.check_calls(self.chat(prompt, **options).choices[0])
        content, calls, finish, _ = collect_stream(self.chat(prompt, stream=True, **options))
        self.assertEqual(finish, "tool_calls")
        self.assertFalse(content)
        self.assertEqual(len(calls), len(whole))
        for streamed, call in zip(calls, whole):
            self.assertTrue(streamed["id"] and streamed["id"].startswith("call_"), streamed)
            self.assertEqual(streamed["name"], call.function.name)
            args = self.assert_json_object(streamed["arguments"], "streamed arguments")
            validate(args, CHAT_TOOL_PARAMETERS[streamed["name"]])
            self.assertEqual(args, json.loads(call.function.arguments))

    def test_named_streamed(self):
        named = {"type": "function", "function": {"name": "get_weather"}}
        content, calls, finish, _ = collect_stream(
            self.chat(TOOL_PROMPTS[1], tool_choice=named, parallel_tool_calls=False, stream=True))
        self.assertEqual(finish, "tool_calls")
        self.assertEqual(len(calls), 1)
        self.assertEqual(calls[0]["name"], "get_weather")
        validate(self.assert_json_object(calls[0]["arguments"]), WEATHER_PARAMETERS)

    def test_parse_pydantic_tool(self):
        completion = self.client.chat.completions.parse(
            model=self.model,
            messages=[{"role": "user", "content": TOOL_PROMPTS[2]}],
            tools=[openai.pydantic_function_tool(GetWeather)],
            tool_choice={"type": "function", "function": {"name": "GetWeather"}},
            parallel_tool_calls=False,
            max_tokens=128,
            temperature=0,
        )
        choice = completion.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        self.assertIsInstance(choice.message.tool_calls[0].function.parsed_arguments, GetWeather)

    def test_call_round_trip(self):
        messages = [{"role": "user", "content": TOOL_PROMPTS[0]}]
        first = self.chat(TOOL_PROMPTS[0], tool_choice="required", parallel_tool_calls=False)
        call = self.check_calls(first.choices[0])[0]
        follow = self.chat(None, messages=messages + [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ], tool_choice="none", max_tokens=32)
        self.assertIn(follow.choices[0].finish_reason, ("stop", "length"))
        self.assertIsInstance(follow.choices[0].message.content, str)
        self.assertFalse(follow.choices[0].message.tool_calls)

    def test_auto_tools_with_response_format(self):
        # tool_choice auto + json_schema: the model answers (JSON valid against the schema) or
        # calls a tool it was given; an answer that has a "name" key is still an answer.
        completion = self.chat(
            "Dave lives in Rome.",
            messages=[{"role": "system", "content": "Describe the person the user names as a JSON object."},
                      {"role": "user", "content": "Dave lives in Rome."}],
            response_format=person_format(True), max_tokens=96)
        choice = completion.choices[0]
        if choice.message.tool_calls:
            self.assertEqual(choice.finish_reason, "tool_calls")
            for call in choice.message.tool_calls:
                self.assertIn(call.function.name, CHAT_TOOL_PARAMETERS, "a call to a tool that was not given")
                validate(self.assert_json_object(call.function.arguments), CHAT_TOOL_PARAMETERS[call.function.name])
        else:
            self.assertEqual(choice.finish_reason, "stop")
            validate(self.assert_json_object(choice.message.content), PERSON_SCHEMA)

    def test_bad_tool_choice(self):
        with self.assertRaises(openai.BadRequestError) as caught:
            self.chat("hi", tool_choice={"type": "function", "function": {"name": "no_such_tool"}})
        self.assertEqual(caught.exception.status_code, 400)
        with self.assertRaises(openai.BadRequestError):
            self.chat("hi", tools=None, tool_choice="required")


class LogitBias(TimedCase):
    def decode(self, token_id):
        """The server's own text for one token id: a legacy completion echoing a token prompt."""
        completion = self.client.completions.create(
            model=self.model, prompt=[token_id], echo=True, max_tokens=1, temperature=0)
        return completion.choices[0].text

    def chat(self, **kwargs):
        options = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Write one sentence about rivers."}],
            "max_tokens": 6,
            "temperature": 0,
        }
        options.update(kwargs)
        return self.client.chat.completions.create(**options)

    def test_plus_100_makes_the_token_appear(self):
        plain = self.chat().choices[0].message.content
        for token_id in (2000, 5000):
            with self.subTest(token_id=token_id):
                echoed = self.decode(token_id)
                self.assertTrue(echoed.strip(), f"token {token_id} decodes to {echoed!r}")
                completion = self.chat(logit_bias={str(token_id): 100}, logprobs=True)
                content = completion.choices[0].message.content
                tokens = [t.token for t in completion.choices[0].logprobs.content]
                self.assertNotEqual(content, plain)
                # Every sampled token is the biased one (its text is the echoed prefix).
                self.assertEqual(len(set(tokens)), 1, tokens)
                self.assertTrue(echoed.startswith(tokens[0]) or tokens[0].strip() in echoed, (tokens, echoed))
                self.assertIn(tokens[0].strip(), content)

    def test_minus_100_bans_the_token(self):
        # The text of token 2000 (what +100 forces), then a prompt that asks for it with -100 on
        # it: it never appears.
        forced = self.chat(logit_bias={"2000": 100}, logprobs=True)
        token = forced.choices[0].logprobs.content[0].token
        banned = self.chat(logit_bias={"2000": -100}, logprobs=True, max_tokens=16,
                           messages=[{"role": "user", "content": f"Repeat after me: {token}{token}{token}"}])
        self.assertNotIn(token, [t.token for t in banned.choices[0].logprobs.content])

    def assert_bad_bias(self, bias):
        with self.assertRaises(openai.BadRequestError) as caught:
            self.chat(logit_bias=bias)
        err = caught.exception
        self.assertEqual(err.status_code, 400)
        # The OpenAI error envelope: {"error": {"message", "type", "param", "code"}}.
        envelope = err.response.json()
        self.assertEqual(set(envelope), {"error"}, envelope)
        self.assertIsInstance(envelope["error"]["message"], str)
        self.assertEqual(envelope["error"]["type"], "invalid_request_error")
        self.assertIn("param", envelope["error"])
        self.assertIn("code", envelope["error"])
        self.assertTrue((err.param or "").startswith("logit_bias"), err.param)
        return err

    def test_bad_logit_bias_is_400(self):
        self.assert_bad_bias({"abc": 500})
        self.assert_bad_bias({"abc": 1})
        self.assert_bad_bias({"2000": 101})
        self.assert_bad_bias({"2000": -101})
        self.assert_bad_bias({"999999999": 1})
        self.assert_bad_bias({"-1": 1})


if __name__ == "__main__":
    unittest.main()
