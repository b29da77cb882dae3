"""The Responses API (`POST /v1/responses`, GET/DELETE /v1/responses/{id}) with the official
`openai` Python SDK: text, streaming events, text.format, parse(), function tools, function-call
round trips, previous_response_id chains, retrieve and delete. See sdk_common.py.
"""

import json
import unittest

import openai
from pydantic import BaseModel, Field

from sdk_common import (
    PERSON_SCHEMA,
    RESPONSES_TIME_TOOL,
    RESPONSES_WEATHER_TOOL,
    TIME_PARAMETERS,
    WEATHER_PARAMETERS,
    TimedCase,
    validate,
)

TOOL_PARAMETERS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}

TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]

CALL_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
]


class Person(BaseModel):
    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=120)
    city: str = Field(max_length=24)


def squeeze(types):
    """Event types with runs of the same type collapsed (deltas come many at a time)."""
    out = []
    for t in types:
        if not out or out[-1] != t:
            out.append(t)
    return out


def shape(response):
    """A response without what legitimately differs between two runs (ids, timestamps, and
    how much of the prompt the prefix cache held)."""
    data = response.model_dump(mode="json", exclude_none=True)
    for key in ("id", "created_at", "completed_at"):
        data.pop(key, None)
    data.get("usage", {}).pop("input_tokens_details", None)
    for item in data.get("output", []):
        item.pop("id", None)
        item.pop("call_id", None)
    return data


class Responses(TimedCase):
    def create(self, **kwargs):
        options = {"model": self.model, "temperature": 0, "max_output_tokens": 64}
        options.update(kwargs)
        return self.client.responses.create(**options)

    def message_text(self, response):
        messages = [item for item in response.output if item.type == "message"]
        self.assertTrue(messages, f"no message item in {response.output}")
        message = messages[0]
        self.assertEqual(message.role, "assistant")
        self.assertTrue(message.id, "a message item has an id")
        self.assertEqual(message.content[0].type, "output_text")
        return "".join(part.text for part in message.content if part.type == "output_text")

    def function_calls(self, response, name=None):
        calls = [item for item in response.output if item.type == "function_call"]
        self.assertTrue(calls, f"no function_call item in {response.output}")
        for call in calls:
            self.assertTrue(call.call_id, "a function_call has a call_id")
            self.assertIn(call.name, TOOL_PARAMETERS)
            if name is not None:
                self.assertEqual(call.name, name)
            validate(self.assert_json_object(call.arguments, "arguments"), TOOL_PARAMETERS[call.name])
        return calls

    def test_create_string_input(self):
        response = self.create(input="Say hello to the world.")
        self.assertTrue(response.id.startswith("resp_"), response.id)
        self.assertEqual(response.object, "response")
        self.assertIn(response.status, ("completed", "incomplete"))
        self.assertEqual(response.model, self.model)
        self.assertIsInstance(response.created_at, (int, float))
        text = self.message_text(response)
        self.assertTrue(text)
        self.assertEqual(response.output_text, text)
        usage = response.usage
        self.assertGreater(usage.input_tokens, 0)
        self.assertGreater(usage.output_tokens, 0)
        self.assertLessEqual(usage.output_tokens, 64)
        self.assertEqual(usage.total_tokens, usage.input_tokens + usage.output_tokens)

    def test_stream_events_and_final_response_equal_non_streamed(self):
        options = {"input": "Say hello.", "max_output_tokens": 96}
        whole = self.create(**options)
        self.assertEqual(whole.status, "completed",
                         f"pick a prompt the model finishes within the budget: {whole.output_text!r}")
        events = list(self.create(stream=True, **options))
        types = [e.type for e in events]
        self.assertEqual(squeeze(types), TEXT_EVENTS, types)
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))
        created, completed = events[0].response, events[-1].response
        self.assertEqual(created.status, "in_progress")
        self.assertEqual(created.id, completed.id)
        self.assertTrue(completed.id.startswith("resp_"))
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        done = next(e for e in events if e.type == "response.output_text.done")
        self.assertEqual(deltas, done.text)
        added = next(e for e in events if e.type == "response.output_item.added")
        item_done = next(e for e in events if e.type == "response.output_item.done")
        self.assertEqual(added.item.id, item_done.item.id)
        for e in events:
            if hasattr(e, "item_id"):
                self.assertEqual(e.item_id, added.item.id, e.type)
        self.assertEqual(completed.output_text, deltas)
        self.assertEqual(completed.status, "completed")
        # Greedy: the streamed response is the non-streamed one, ids and times aside.
        self.assertEqual(shape(completed), shape(whole))

    def test_items_input_and_instructions(self):
        items = [
            {"role": "user", "content": "Hi!"},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Hello! How can I help?"}]},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "Name a colour."}]},
        ]
        plain = self.create(input=items, max_output_tokens=16)
        instructed = self.create(input=items, max_output_tokens=16,
                                 instructions="You are a painter. Always answer with one colour.")
        self.message_text(plain)
        self.message_text(instructed)
        self.assertEqual(instructed.instructions, "You are a painter. Always answer with one colour.")
        # The instructions are part of the prompt.
        self.assertNotEqual(instructed.usage.input_tokens, plain.usage.input_tokens)

    def test_max_output_tokens_is_incomplete(self):
        response = self.create(input="Write a very long story about a dragon.", max_output_tokens=16)
        self.assertEqual(response.usage.output_tokens, 16)
        self.assertEqual(response.status, "incomplete")
        self.assertEqual(response.incomplete_details.reason, "max_output_tokens")

    def test_text_format_json_schema(self):
        text = {"format": {"type": "json_schema", "name": "person", "schema": PERSON_SCHEMA, "strict": True}}
        for prompt in ("Alice is 30 and lives in Paris.", "Invent a person."):
            with self.subTest(prompt=prompt):
                response = self.create(input=prompt, text=text, max_output_tokens=160)
                self.assertEqual(response.status, "completed", response.output_text)
                validate(self.assert_json_object(response.output_text), PERSON_SCHEMA)
                self.assertEqual(response.text.format.type, "json_schema")

    def test_text_format_json_object(self):
        response = self.create(input='Reply with a JSON object like {"answer": "yes"}: is the sky blue?',
                               text={"format": {"type": "json_object"}}, max_output_tokens=96)
        self.assertEqual(response.status, "completed", response.output_text)
        self.assert_json_object(response.output_text)

    def test_parse_pydantic(self):
        response = self.client.responses.parse(
            model=self.model, input="Bob, 45, from Lyon.", text_format=Person,
            temperature=0, max_output_tokens=160)
        self.assertIsInstance(response.output_parsed, Person, response.output_text)

    def test_function_tool_required_and_named(self):
        tools = [RESPONSES_WEATHER_TOOL, RESPONSES_TIME_TOOL]
        response = self.create(input="What's the weather in Paris?", tools=tools,
                               tool_choice="required", parallel_tool_calls=False, max_output_tokens=128)
        self.assertEqual(response.status, "completed")
        self.assertEqual(len(self.function_calls(response)), 1)
        self.assertFalse([i for i in response.output if i.type == "message"], "a forced call has no prose")
        named = self.create(input="Tell me a joke.", tools=tools, max_output_tokens=128,
                            tool_choice={"type": "function", "name": "get_time"}, parallel_tool_calls=False)
        calls = self.function_calls(named, "get_time")
        self.assertEqual(len(calls), 1)

    def test_parallel_calls_allowed(self):
        # The tiny model repeats its call until the budget ends: every complete call is an item,
        # the response is incomplete, and no partial <tool_call> markup becomes a message.
        response = self.create(input="What is the weather in Paris, in London and in Rome?",
                               tools=[RESPONSES_WEATHER_TOOL], tool_choice="required", max_output_tokens=96)
        self.assertIn(response.status, ("completed", "incomplete"))
        calls = self.function_calls(response, "get_weather")
        self.assertEqual(len({c.call_id for c in calls}), len(calls))
        self.assertEqual([i.type for i in response.output], ["function_call"] * len(calls),
                         f"only calls beside a forced call: {response.output}")

    def test_function_call_streamed(self):
        options = {"input": "What's the weather in Rome?", "tools": [RESPONSES_WEATHER_TOOL],
                   "tool_choice": "required", "parallel_tool_calls": False, "max_output_tokens": 128}
        whole = self.create(**options)
        events = list(self.create(stream=True, **options))
        types = [e.type for e in events]
        self.assertEqual(squeeze(types), CALL_EVENTS, types)
        added = next(e for e in events if e.type == "response.output_item.added")
        self.assertEqual(added.item.type, "function_call")
        self.assertEqual(added.item.name, "get_weather")
        deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        done = next(e for e in events if e.type == "response.function_call_arguments.done")
        self.assertEqual(deltas, done.arguments)
        final = events[-1].response
        [call] = self.function_calls(final, "get_weather")
        self.assertEqual(call.arguments, done.arguments)
        self.assertEqual(shape(final), shape(whole))

    def test_function_call_round_trip(self):
        tools = [RESPONSES_WEATHER_TOOL]
        question = {"role": "user", "content": "What's the weather in Paris?"}
        first = self.create(input=[question], tools=tools, tool_choice="required",
                            parallel_tool_calls=False, max_output_tokens=128)
        [call] = self.function_calls(first, "get_weather")
        result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}
        # With previous_response_id: the server replays the stored question and call.
        second = self.create(previous_response_id=first.id, input=[result], tools=tools,
                             tool_choice="none", max_output_tokens=16)
        self.assertEqual(second.previous_response_id, first.id)
        self.assertIsInstance(self.message_text(second), str)
        self.assertFalse([i for i in second.output if i.type == "function_call"])
        # Stateless: the client sends the whole conversation (as the Agents SDK does). The
        # prompt is the same one, so (greedy) is the answer.
        stateless = self.create(store=False, tools=tools, tool_choice="none", max_output_tokens=16, input=[
            question,
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            result,
        ])
        self.assertEqual(stateless.usage.input_tokens, second.usage.input_tokens)
        self.assertEqual(stateless.output_text, second.output_text)

    def test_previous_response_id_chain(self):
        first = self.create(input="My name is Ada and I like owls.", max_output_tokens=24)
        question = "What is my name?"
        alone = self.create(input=question, max_output_tokens=8)
        chained = self.create(input=question, previous_response_id=first.id, max_output_tokens=8)
        self.assertEqual(chained.previous_response_id, first.id)
        # The chained prompt holds the first turn: its user message and the reply.
        self.assertGreaterEqual(chained.usage.input_tokens, alone.usage.input_tokens + first.usage.output_tokens)
        self.assertGreater(chained.usage.input_tokens, first.usage.input_tokens)
        replayed = self.create(store=False, max_output_tokens=8, input=[
            {"role": "user", "content": "My name is Ada and I like owls."},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": question},
        ])
        self.assertEqual(chained.usage.input_tokens, replayed.usage.input_tokens)
        self.assertEqual(chained.output_text, replayed.output_text)
        third = self.create(input="And what do I like?", previous_response_id=chained.id, max_output_tokens=8)
        self.assertGreater(third.usage.input_tokens, chained.usage.input_tokens + chained.usage.output_tokens)
        # The server keeps the chain.
        stored = self.client.responses.retrieve(third.id)
        self.assertEqual(stored.previous_response_id, chained.id)

    def test_retrieve_and_delete(self):
        response = self.create(input="Say yes.", max_output_tokens=8)
        stored = self.client.responses.retrieve(response.id)
        self.assertEqual(stored.id, response.id)
        self.assertEqual(stored.status, response.status)
        self.assertEqual(stored.output_text, response.output_text)
        self.assertEqual(stored.usage.output_tokens, response.usage.output_tokens)
        self.assertEqual(shape(stored), shape(response))
        self.assertIsNone(self.client.responses.delete(response.id))
        with self.assertRaises(openai.NotFoundError):
            self.client.responses.retrieve(response.id)
        with self.assertRaises(openai.NotFoundError):
            self.client.responses.delete(response.id)
        with self.assertRaises((openai.NotFoundError, openai.BadRequestError)):
            self.create(input="Hi", previous_response_id=response.id, max_output_tokens=4)

    def test_store_false_is_not_kept(self):
        response = self.create(input="Say no.", max_output_tokens=8, store=False)
        self.assertTrue(response.id.startswith("resp_"))
        with self.assertRaises(openai.NotFoundError):
            self.client.responses.retrieve(response.id)

    def test_errors(self):
        with self.assertRaises(openai.NotFoundError):
            self.client.responses.retrieve("resp_does_not_exist")
        with self.assertRaises((openai.NotFoundError, openai.BadRequestError)) as caught:
            self.create(input="Hi", previous_response_id="resp_does_not_exist")
        self.assertIn(caught.exception.status_code, (400, 404))
        with self.assertRaises(openai.BadRequestError):
            self.create(input="Hi", tools=[RESPONSES_WEATHER_TOOL],
                        tool_choice={"type": "function", "name": "no_such_tool"})
        with self.assertRaises(openai.BadRequestError):
            self.create(input="Hi", temperature=5)
        with self.assertRaises(openai.NotFoundError):
            self.create(input="Hi", model="no-such-model")


if __name__ == "__main__":
    unittest.main()
