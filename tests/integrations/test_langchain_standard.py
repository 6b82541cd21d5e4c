"""langchain-tests standard suites: ChatVLLM on the bundled SmolLM2-135M-Instruct, VLLMEmbeddings on the
bundled all-MiniLM-L6-v2.

Capability flags left at their defaults are features ChatVLLM has (tool calling, tool_choice,
structured output, usage metadata). Skips come only from flags below, each saying why.
"""
from __future__ import annotations

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_tests.integration_tests import ChatModelIntegrationTests, EmbeddingsIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests
from model_fixtures import BUNDLED

from pagedllm.integrations.langchain import ChatVLLM, VLLMEmbeddings

# Greedy and float32, so repeated calls are identical whatever the prefix cache reuses.
PARAMS = {"model": BUNDLED, "temperature": 0, "dtype": "float32"}


class _Flags:
    @property
    def chat_model_class(self) -> type[ChatVLLM]:
        return ChatVLLM

    @property
    def chat_model_params(self) -> dict:
        return dict(PARAMS)

    @property
    def supports_json_mode(self) -> bool:
        return True  # with_structured_output(method="json_mode"): any JSON object, enforced

    # Text-only engine: no image/audio/video/PDF encoder exists for these models, and
    # Anthropic-shaped content blocks are not a format a chat template reads.
    supports_image_inputs = supports_audio_inputs = supports_pdf_inputs = property(lambda self: False)
    supports_image_tool_message = supports_pdf_tool_message = property(lambda self: False)
    supports_anthropic_inputs = property(lambda self: False)

    @property
    def enable_vcr_tests(self) -> bool:
        return False  # nothing to record: the model runs in-process, no HTTP

    @property
    def model_override_value(self) -> None:
        return None  # a per-call `model=` would load a second model; a ChatVLLM serves one

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class TestChatVLLMUnit(_Flags, ChatModelUnitTests):
    """Loads no model: ChatVLLM builds its engine on first use only."""


@pytest.mark.slow
@pytest.mark.asyncio
class TestChatVLLMIntegration(_Flags, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict:
        # Settings a user picks for a 135M model under greedy decoding: it repeats a phrase until the
        # token budget ends ("The cat was a cat, and the cat was a cat, and ..."), so the JSON object
        # is cut. frequency_penalty (output tokens only, so numbers and names are still copied from
        # the prompt) stops that: every tool-call and structured-output test here ends by itself at
        # 0.5, 0.8, 1.0 and 1.5; at 0 the joke schemas never close within 96 tokens.
        # repetition_penalty is no use: it also penalizes prompt tokens, and at 1.1-1.3 the tool
        # calls come out as input=567 and customer_name="".
        return PARAMS | {"max_tokens": 64, "frequency_penalty": 1.0}

    # Not a skip: JSON mode works (any JSON object, enforced), but this test also grades whether
    # SmolLM2-135M puts the keys the user asked for at the top level, and it nests them instead:
    # after '{"setup":' its own top choice is another object ('{"' logprob -0.98, a string '"' -2.97),
    # giving '{"setup":{"setup":...' or '{"setup":{"punchline":...}}'. Measured with no system note
    # and four generic ones, compact or flexible whitespace, frequency_penalty 0-2: 1 of 20 settings
    # gave the two keys, which is luck, not a setting to ship. Strict, and only for the parser's
    # complaint about the keys (OutputParserException): a crash or any other error fails the run,
    # and so does a pass (a larger bundled model: drop the mark then).
    @pytest.mark.xfail(reason="SmolLM2-135M nests JSON-mode keys ('{\"setup\":{\"punchline\":...}}') instead of "
                              "writing them at the top level, as the test's prompt asks", strict=True,
                       raises=OutputParserException)
    def test_json_mode(self, model) -> None:
        super().test_json_mode(model)


class _EmbeddingsFlags:
    @property
    def embeddings_class(self) -> type[VLLMEmbeddings]:
        return VLLMEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "sentence-transformers/all-MiniLM-L6-v2", "dtype": "float32"}


class TestVLLMEmbeddingsUnit(_EmbeddingsFlags, EmbeddingsUnitTests):
    """Loads no model: VLLMEmbeddings builds its engine on first use only."""


@pytest.mark.asyncio
class TestVLLMEmbeddingsIntegration(_EmbeddingsFlags, EmbeddingsIntegrationTests):
    """Not slow: the bundled MiniLM loads in seconds and is shared with the other embedding tests."""
