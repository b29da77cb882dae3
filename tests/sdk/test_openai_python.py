"""Client compatibility with the official `openai` Python SDK.

Environment:
  HINDSIGHT_BASE_URL      e.g. http://127.0.0.1:8080/v1 (required)
  HINDSIGHT_API_KEY       the key to send (default "none")
  HINDSIGHT_MODEL         the model id (default: the first of models.list())
  HINDSIGHT_EXPECT_AUTH=1 the server requires keys: a wrong key must raise AuthenticationError
  HINDSIGHT_EXPECT_429=1  the server's queue is small: a burst must raise RateLimitError
  HINDSIGHT_EXPECT_TOOL_CALLS=1  the model is known to answer the weather prompt with a call

Run: python tests/sdk/test_openai_python.py -v
"""

import concurrent.futures
import json
import os
import unittest

import openai

BASE_URL = os.environ["HINDSIGHT_BASE_URL"]
API_KEY = os.environ.get("HINDSIGHT_API_KEY", "none")
FLAG = lambda name: os.environ.get(name) == "1"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def client(**kwargs):
    options = {"base_url": BASE_URL, "api_key": API_KEY, "max_retries": 0, "timeout": 120}
    options.update(kwargs)
    return openai.OpenAI(**options)


class OpenAIPythonSDK(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = client()
        cls.model = os.environ.get("HINDSIGHT_MODEL") or cls.client.models.list().data[0].id

    def chat(self, **kwargs):
        options = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Write one sentence about rivers."}],
            "max_tokens": 24,
        }
        options.update(kwargs)
        return self.client.chat.completions.create(**options)

    def test_models_list_and_retrieve(self):
        ids = [m.id for m in self.client.models.list().data]
        self.assertIn(self.model, ids)
        model = self.client.models.retrieve(self.model)
        self.assertEqual(model.id, self.model)
        self.assertEqual(model.object, "model")

    def test_create(self):
        completion = self.chat(temperature=0)
        self.assertTrue(completion.id.startswith("chatcmpl-"))
        self.assertEqual(completion.object, "chat.completion")
        self.assertTrue(completion.system_fingerprint.startswith("hs-v"))
        choice = completion.choices[0]
        self.assertEqual(choice.message.role, "assistant")
        self.assertIsInstance(choice.message.content, str)
        self.assertTrue(choice.message.content)
        self.assertIn(choice.finish_reason, ("stop", "length"))
        usage = completion.usage
        self.assertGreater(usage.prompt_tokens, 0)
        self.assertGreater(usage.completion_tokens, 0)
        self.assertLessEqual(usage.completion_tokens, 24)
        self.assertEqual(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens)

    def test_stream_concatenates_to_the_same_text(self):
        kwargs = {"temperature": 0.7, "seed": 1234}
        whole = self.chat(**kwargs)
        stream = self.chat(stream=True, stream_options={"include_usage": True}, **kwargs)
        pieces, finish, usage, content_chunks = [], None, None, 0
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                    content_chunks += 1
                if choice.finish_reason:
                    finish = choice.finish_reason
        self.assertEqual("".join(pieces), whole.choices[0].message.content)
        self.assertEqual(finish, whole.choices[0].finish_reason)
        self.assertGreater(content_chunks, 1, "streamed token by token")
        self.assertIsNotNone(usage)
        self.assertEqual(usage.completion_tokens, whole.usage.completion_tokens)

    def test_n_choices(self):
        completion = self.chat(n=2, temperature=0.9, seed=7)
        self.assertEqual([c.index for c in completion.choices], [0, 1])
        for choice in completion.choices:
            self.assertIsInstance(choice.message.content, str)

    def test_logprobs(self):
        completion = self.chat(temperature=0, logprobs=True, top_logprobs=2, max_tokens=8)
        content = completion.choices[0].logprobs.content
        self.assertEqual(len(content), completion.usage.completion_tokens)
        for entry in content:
            self.assertIsInstance(entry.token, str)
            self.assertLessEqual(entry.logprob, 0.0)
            self.assertEqual(len(entry.top_logprobs), 2)
            self.assertEqual(entry.bytes, list(entry.token.encode("utf-8")))

    def test_tools(self):
        messages = [{"role": "user", "content": "What is the weather in Paris right now?"}]
        completion = self.chat(messages=messages, tools=[WEATHER_TOOL], temperature=0, max_tokens=128)
        choice = completion.choices[0]
        if FLAG("HINDSIGHT_EXPECT_TOOL_CALLS"):
            self.assertEqual(choice.finish_reason, "tool_calls")
        if choice.finish_reason == "tool_calls":
            call = choice.message.tool_calls[0]
            self.assertTrue(call.id.startswith("call_"))
            self.assertEqual(call.type, "function")
            self.assertEqual(call.function.name, "get_weather")
            self.assertIsInstance(json.loads(call.function.arguments), dict)
            # Stream the same request: the SDK's delta accumulation sees the same call.
            stream = self.chat(messages=messages, tools=[WEATHER_TOOL], temperature=0,
                               max_tokens=128, stream=True)
            streamed = {}
            for chunk in stream:
                for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                    entry = streamed.setdefault(delta_call.index, {"name": "", "arguments": ""})
                    entry["name"] += delta_call.function.name or ""
                    entry["arguments"] += delta_call.function.arguments or ""
            self.assertEqual(streamed[0]["name"], call.function.name)
            self.assertEqual(json.loads(streamed[0]["arguments"]), json.loads(call.function.arguments))
            # Send the result back.
            follow = self.chat(messages=messages + [
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
            ], tools=[WEATHER_TOOL], tool_choice="none", temperature=0)
            self.assertIsInstance(follow.choices[0].message.content, str)

    def test_legacy_completion(self):
        completion = self.client.completions.create(
            model=self.model, prompt="The capital of France is", max_tokens=5, temperature=0)
        self.assertEqual(completion.object, "text_completion")
        self.assertIsInstance(completion.choices[0].text, str)
        self.assertLessEqual(completion.usage.completion_tokens, 5)

    def test_bad_request(self):
        with self.assertRaises(openai.BadRequestError) as caught:
            self.chat(temperature=5)
        self.assertEqual(caught.exception.status_code, 400)
        self.assertEqual(caught.exception.param, "temperature")
        with self.assertRaises(openai.BadRequestError):
            self.chat(messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])

    def test_not_found(self):
        with self.assertRaises(openai.NotFoundError) as caught:
            self.chat(model="no-such-model")
        self.assertEqual(caught.exception.code, "model_not_found")

    @unittest.skipUnless(FLAG("HINDSIGHT_EXPECT_AUTH"), "the server runs without keys")
    def test_authentication(self):
        with self.assertRaises(openai.AuthenticationError) as caught:
            client(api_key="sk-wrong").models.list()
        self.assertEqual(caught.exception.code, "invalid_api_key")

    @unittest.skipUnless(FLAG("HINDSIGHT_EXPECT_429"), "the server's queue is not small")
    def test_rate_limit(self):
        def one(_):
            try:
                self.chat(max_tokens=64, temperature=0.7)
                return None
            except openai.RateLimitError as err:
                return err
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            errors = [e for e in pool.map(one, range(16)) if e is not None]
        self.assertTrue(errors, "no request was refused")
        self.assertEqual(errors[0].status_code, 429)


if __name__ == "__main__":
    unittest.main()
