"""Agent frameworks on top of the official SDK against Hindsight: LangChain's ChatOpenAI
(with_structured_output over Chat Completions json_schema / function calling, and over the
Responses API) and the OpenAI Agents SDK (`agents`) on its default Responses API model.
See sdk_common.py for the environment.
"""

import asyncio
import unittest

from pydantic import BaseModel, Field

from sdk_common import API_KEY, BASE_URL, TimedCase, async_client


class Person(BaseModel):
    """A person."""

    name: str = Field(max_length=24, description="first name")
    age: int = Field(ge=0, le=120)
    city: str = Field(max_length=24)


class WeatherReport(BaseModel):
    """The final answer of the weather agent."""

    city: str = Field(max_length=24)
    summary: str = Field(max_length=40)


class LangChain(TimedCase):
    def chat_model(self, **kwargs):
        from langchain_openai import ChatOpenAI

        options = {
            "model": self.model,
            "base_url": BASE_URL,
            "api_key": API_KEY,
            "temperature": 0,
            "max_tokens": 160,
            "max_retries": 0,
            "timeout": 180,
        }
        options.update(kwargs)
        return ChatOpenAI(**options)

    def test_structured_output_json_schema(self):
        structured = self.chat_model().with_structured_output(Person, method="json_schema")
        person = structured.invoke("Alice is 30 and lives in Paris.")
        self.assertIsInstance(person, Person)

    def test_structured_output_function_calling(self):
        structured = self.chat_model().with_structured_output(Person, method="function_calling")
        person = structured.invoke("Bob, 45, from Lyon.")
        self.assertIsInstance(person, Person)

    def test_structured_output_include_raw(self):
        structured = self.chat_model().with_structured_output(
            Person, method="json_schema", include_raw=True)
        result = structured.invoke("Invent a person.")
        self.assertIsNone(result["parsing_error"])
        self.assertIsInstance(result["parsed"], Person)
        self.assertTrue(result["raw"].response_metadata.get("system_fingerprint", "").startswith("hs-v"))

    def test_responses_api(self):
        llm = self.chat_model(use_responses_api=True)
        structured = llm.with_structured_output(Person, method="json_schema")
        person = structured.invoke("Carol is 52 and lives in Oslo.")
        self.assertIsInstance(person, Person)
        reply = llm.invoke("Say hello.", max_tokens=16)
        self.assertTrue(reply.id.startswith("resp_") or reply.response_metadata.get("id", "").startswith("resp_"),
                        (reply.id, reply.response_metadata))
        self.assertIsInstance(reply.text, str)


class AgentsSDK(TimedCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        from agents import set_tracing_disabled

        set_tracing_disabled(True)

    def run_agent(self, make_run):
        """Runs `make_run(model)` (a coroutine) on a fresh event loop with a fresh AsyncOpenAI
        client, closed before the loop is: a client's connection pool is bound to its loop."""
        from agents import OpenAIResponsesModel

        async def main():
            async with async_client() as client:
                return await make_run(OpenAIResponsesModel(model=self.model, openai_client=client))

        return asyncio.run(main())

    def test_output_type(self):
        from agents import Agent, ModelSettings, Runner, function_tool

        @function_tool
        def lookup_age(name: str) -> int:
            """The age of a person, by name."""
            return 33

        agent = Agent(
            name="profiler",
            instructions="Describe the person the user names as a JSON object.",
            tools=[lookup_age],
            output_type=Person,
            model_settings=ModelSettings(temperature=0, max_tokens=160),
        )
        result = self.run_agent(
            lambda model: Runner.run(agent.clone(model=model), "Dave lives in Rome.", max_turns=4))
        self.assertIsInstance(result.final_output, Person, result.final_output)
        for raw in result.raw_responses:
            self.assertTrue(raw.response_id.startswith("resp_"), raw.response_id)

    def test_forced_tool_call_result_flows_back(self):
        from agents import Agent, ModelSettings, RunHooks, Runner, function_tool

        calls = []

        @function_tool
        def get_weather(city: str) -> str:
            """Current weather in a city."""
            calls.append(city)
            return "sunny and 21 C"

        class Recorder(RunHooks):
            def __init__(self):
                self.inputs = []

            async def on_llm_start(self, context, agent, system_prompt, input_items):
                self.inputs.append(list(input_items))

        hooks = Recorder()
        agent = Agent(
            name="weather",
            instructions="Use the get_weather tool, then report the weather.",
            tools=[get_weather],
            output_type=WeatherReport,
            # The first call is forced; reset_tool_choice (the default) lets the next turn answer.
            # One call per turn: the tiny model would otherwise repeat its call to the budget.
            model_settings=ModelSettings(temperature=0, max_tokens=160, tool_choice="required",
                                         parallel_tool_calls=False),
        )
        self.assertTrue(agent.reset_tool_choice)
        result = self.run_agent(lambda model: Runner.run(
            agent.clone(model=model), "What's the weather in Paris?", hooks=hooks, max_turns=6))
        self.assertTrue(calls, "the tool was never called")
        for city in calls:
            self.assertIsInstance(city, str)
        self.assertIsInstance(result.final_output, WeatherReport, result.final_output)
        self.assertGreaterEqual(len(result.raw_responses), 2)
        kinds = [item.type for item in result.new_items]
        self.assertIn("tool_call_item", kinds)
        self.assertIn("tool_call_output_item", kinds)
        self.assertEqual(kinds[-1], "message_output_item", kinds)
        # The tool's output went back to the model in the next request.
        outputs = [item for item in hooks.inputs[1] if isinstance(item, dict) and item.get("type") == "function_call_output"]
        self.assertTrue(outputs, hooks.inputs[1])
        self.assertIn("sunny and 21 C", str(outputs[0]["output"]))

    def test_streamed_run(self):
        from agents import Agent, ModelSettings, Runner

        agent = Agent(
            name="profiler",
            instructions="Describe the person the user names.",
            output_type=Person,
            model_settings=ModelSettings(temperature=0, max_tokens=160),
        )

        async def run(model):
            result = Runner.run_streamed(agent.clone(model=model), "Erin is 28 and lives in Madrid.")
            kinds = [event.type async for event in result.stream_events()]
            return result, kinds

        result, kinds = self.run_agent(run)
        self.assertIn("raw_response_event", kinds)
        self.assertIsInstance(result.final_output, Person, result.final_output)


if __name__ == "__main__":
    unittest.main()
