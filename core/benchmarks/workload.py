"""A seeded synthetic chat workload for throughput benchmarks.

Real chat traffic is a mix of short and long questions with output lengths that vary a lot;
that variance is what continuous batching exploits and static batching pays for, so the
workload keeps it. Everything derives from one ``random.Random(seed)``: the same seed gives
the same prompts, the same token ids and the same output lengths on every machine.
Prompts are rendered through the tokenizer's chat template (with the generation prompt) and
tokenized once here, so every backend receives identical token ids.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

DEFAULT_NUM_REQUESTS = 128
DEFAULT_MIN_OUTPUT_LEN = 16
DEFAULT_MAX_OUTPUT_LEN = 256

TOPICS = (
    "photosynthesis", "the French Revolution", "black holes", "compound interest",
    "the immune system", "plate tectonics", "machine learning", "the water cycle",
    "the Roman Empire", "quantum entanglement", "climate change", "the stock market",
    "DNA replication", "volcanoes", "the printing press", "renewable energy",
    "the human heart", "jazz music", "the Silk Road", "electric cars",
    "sourdough bread", "the Moon landing", "honeybees", "public key cryptography",
    "the Great Barrier Reef", "supply and demand", "vaccines", "the theory of relativity",
    "coral bleaching", "the Industrial Revolution", "sleep", "recycling plastics",
)
AUDIENCES = (
    "a five-year-old", "a high school student", "a busy manager", "a curious grandparent",
    "a first-year university student", "someone who has never heard of it",
)
TEMPLATES = (
    "What is {topic}?",
    "Explain {topic} to {audience}.",
    "Give me three interesting facts about {topic}.",
    "Why does {topic} matter today? Answer for {audience}.",
    "Write a short poem about {topic}.",
    "Compare {topic} with {other}. What do they have in common?",
    "Summarize the history of {topic} in a few sentences.",
    "I am preparing a talk for {audience} about {topic}. Suggest an outline.",
    "List common misconceptions about {topic} and correct them.",
    "How would you teach {topic} to {audience}, step by step?",
)
# Optional extra sentences that make some prompts much longer than others.
DETAILS = (
    "Please keep the language simple and avoid jargon where you can.",
    "Use concrete examples from everyday life.",
    "I have read a little about this before but I found it confusing.",
    "If there are open questions or debates among experts, mention them briefly.",
    "Structure the answer with short paragraphs.",
    "Mention one surprising detail that most people do not know.",
    "Assume I will share your answer with friends who are not experts either.",
    "Relate it to {other} if that helps the explanation.",
)
SYSTEM_PROMPTS = (
    None,  # the template's own default system prompt, if it has one
    "You are a patient teacher who explains things clearly.",
    "You are a concise assistant. Prefer short, precise answers.",
)


@dataclass(frozen=True, slots=True)
class SyntheticRequest:
    """One benchmark request: the rendered chat prompt, its token ids and the output length.

    ``messages`` is the conversation the prompt was rendered from, for chat-level backends
    (the LangChain adapter) that must send the same request as messages, not token ids.
    """

    prompt: str
    prompt_token_ids: list[int]
    output_len: int
    messages: list[dict] | None = None


def make_user_message(rng: random.Random) -> str:
    """Build one varied user question from the templates and topic lists."""
    topic, other = rng.sample(TOPICS, 2)
    fill = {"topic": topic, "other": other, "audience": rng.choice(AUDIENCES)}
    parts = [rng.choice(TEMPLATES).format(**fill)]
    for detail in rng.sample(DETAILS, rng.randint(0, len(DETAILS))):
        parts.append(detail.format(**fill))
    return " ".join(parts)


def make_messages(rng: random.Random) -> list[dict]:
    """A chat conversation (optional system prompt + one user turn)."""
    system = rng.choice(SYSTEM_PROMPTS)
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": make_user_message(rng)})
    return messages


def build_workload(
    tokenizer,
    num_requests: int = DEFAULT_NUM_REQUESTS,
    min_output_len: int = DEFAULT_MIN_OUTPUT_LEN,
    max_output_len: int = DEFAULT_MAX_OUTPUT_LEN,
    seed: int = 0,
) -> list[SyntheticRequest]:
    """Return ``num_requests`` chat requests with output lengths uniform in [min, max].

    ``tokenizer`` is a Hugging Face tokenizer with a chat template. The token ids are those of
    the rendered template text (``add_special_tokens=False``: the template already holds any
    special tokens it wants), so backends must be fed ``prompt_token_ids``, not the text.
    """
    if not isinstance(num_requests, int) or num_requests < 1:
        raise ValueError(f"num_requests must be an integer >= 1, got {num_requests!r}")
    if not isinstance(min_output_len, int) or min_output_len < 1:
        raise ValueError(f"min_output_len must be an integer >= 1, got {min_output_len!r}")
    if not isinstance(max_output_len, int) or max_output_len < min_output_len:
        raise ValueError(
            f"max_output_len must be an integer >= min_output_len ({min_output_len}), "
            f"got {max_output_len!r}"
        )
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("tokenizer has no chat template; the workload needs a chat model's tokenizer")
    rng = random.Random(seed)
    requests = []
    for _ in range(num_requests):
        messages = make_messages(rng)
        output_len = rng.randint(min_output_len, max_output_len)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        requests.append(SyntheticRequest(prompt=prompt, prompt_token_ids=list(ids), output_len=output_len,
                                         messages=messages))
    return requests


def workload_stats(requests: list[SyntheticRequest]) -> dict:
    """Sizes of a workload, for reports: request count and prompt/output token totals and ranges."""
    prompt_lens = [len(r.prompt_token_ids) for r in requests]
    output_lens = [r.output_len for r in requests]
    return {
        "num_requests": len(requests),
        "prompt_tokens": sum(prompt_lens),
        "output_tokens": sum(output_lens),
        "prompt_len_min": min(prompt_lens),
        "prompt_len_max": max(prompt_lens),
        "output_len_min": min(output_lens),
        "output_len_max": max(output_lens),
    }
