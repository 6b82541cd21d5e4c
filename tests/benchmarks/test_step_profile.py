"""`bench step`: each part's time is exclusive (a nested timed call is not counted twice), the LM head's
kernel is told apart from the layers' by who called it, and a real decode step is broken down into parts
that add up to the measured step."""
import pytest

from pagedllm.benchmarks import step_profile


def test_flags_are_documented(cli_help):
    out = cli_help("bench", "step")
    assert "--new-tokens" in out and "--repetitions" in out and "--dequantize-gguf" in out


def test_exclusive_time_subtracts_timed_children(monkeypatch):
    # outer 0..20; a layer kernel 1..4; the LM head's Python 10..15 around its kernel 11..14
    clock = iter(float(t) for t in (0, 1, 4, 10, 11, 14, 15, 20))
    monkeypatch.setattr(step_profile.time, "perf_counter", lambda: next(clock))
    timer = step_profile.StepTimer()
    child = timer.wrap(lambda: None, part_of=step_profile._kernel_part)
    head_child = timer.wrap(lambda: child(), "LM head: Python")

    def body():
        child()
        head_child()
    outer = timer.wrap(body, "outer")
    outer()
    ex = timer.exclusive
    assert ex[step_profile.KERNEL_PART] == 3 and ex[step_profile.HEAD_KERNEL_PART] == 3
    assert ex["LM head: Python"] == 5 - 3 and ex["outer"] == 20 - 3 - 5
    assert sum(ex.values()) == 20


@pytest.mark.slow  # loads the bundled model twice and decodes ~20 tokens
@pytest.mark.parametrize("eager", [True, False])
def test_decode_step_breakdown_adds_up_to_the_step(eager):
    """The modules part by part (enforce_eager), or the default flat decode with its layers in one C call."""
    from pagedllm import LLM

    llm = LLM("HuggingFaceTB/SmolLM2-135M-Instruct", kv_cache_memory=64 << 20, enforce_eager=eager)
    result = step_profile.profile_decode(llm, list(range(100, 116)), new_tokens=8, repetitions=1)
    parts = result["parts_ms"]
    assert parts[step_profile.HEAD_KERNEL_PART] > 0 and parts["sampling"] > 0
    if eager:
        assert parts[step_profile.KERNEL_PART] > 0 and parts["decoder layers: Python per layer"] > 0
    else:
        assert parts[step_profile.C_LAYERS_PART] > 0.5 * result["step_ms"]
    assert result["decode_steps"] == 8  # the prefill step (which made the first token) left out
    assert sum(parts.values()) == pytest.approx(result["step_ms"])
    assert 0 <= parts["timers and step wrapper"] < 0.05 * result["step_ms"]  # every part's time is in a named one
    assert "weight kernels (layers + LM head)" in step_profile.format_profile(result, "t")
