"""Bad input raises ValueError/TypeError naming the parameter; nothing already accepted is harmed."""
import pytest

from model_fixtures import make_tiny_model
from pagedllm import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", max_position_embeddings=64)
    return LLM(path, dtype="float32", kv_cache_memory=8 << 20)


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"max_tokens": 0}, ValueError, "max_tokens"),
    ({"max_tokens": -3}, ValueError, "max_tokens"),
    ({"temperature": -0.1}, ValueError, "temperature"),
    ({"top_p": 0.0}, ValueError, "top_p"),
    ({"top_p": 1.5}, ValueError, "top_p"),
    ({"top_k": -2}, ValueError, "top_k"),
    ({"min_p": 2.0}, ValueError, "min_p"),
    ({"temperature": "hot"}, TypeError, "temperature"),
    ({"max_tokens": 2.5}, TypeError, "max_tokens"),
    ({"stop_token_ids": [-1]}, ValueError, "stop_token_ids"),
])
def test_sampling_params_validation(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        SamplingParams(**kwargs)


def test_engine_args_validation(tmp_path):
    with pytest.raises(TypeError, match="max_model_length"):
        LLM("whatever", max_model_length=10)
    with pytest.raises(ValueError, match="block_size"):
        LLM("whatever", block_size=7)
    with pytest.raises(ValueError, match="dtype"):
        LLM("whatever", dtype="float8")
    with pytest.raises(ValueError, match="pipeline_parallel_size"):
        LLM("whatever", pipeline_parallel_size=0)
    with pytest.raises(ValueError, match="distributed_executor_backend='external_launcher' with "
                                         "tensor_parallel_size=2: several ranks run on mp .* or ray"):
        LLM("whatever", tensor_parallel_size=2, distributed_executor_backend="external_launcher")


def test_ray_backend_without_ray_names_the_extra(monkeypatch):
    import sys

    from pagedllm.engine.ray_executor import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ImportError, match=r"distributed_executor_backend='ray' needs Ray: pip install "
                                          r"'pagedllm\[ray\]'"):
        import_ray()


def test_generate_validation(llm):
    with pytest.raises(ValueError, match="prompts"):
        llm.generate([], SamplingParams())
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate("word " * 100, SamplingParams(max_tokens=4), use_tqdm=False)
    with pytest.raises(ValueError, match="empty"):
        llm.generate("", SamplingParams(max_tokens=4), use_tqdm=False)
    with pytest.raises(TypeError, match="temprature"):
        llm.generate("hi", temprature=0.5, use_tqdm=False)
    with pytest.raises(ValueError, match="sampling_params"):
        llm.generate(["a", "b"], [SamplingParams()], use_tqdm=False)
    with pytest.raises(ValueError, match="vocabulary"):
        llm.generate([[1, 2, 10**9]], SamplingParams(max_tokens=2), use_tqdm=False)
    # A bad prompt in a list rejects the call without leaving half of it in the engine.
    with pytest.raises(ValueError):
        llm.generate(["fine", "word " * 100], SamplingParams(max_tokens=2), use_tqdm=False)
    engine = llm.llm_engine
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    ok = llm.generate("still works", SamplingParams(max_tokens=3, temperature=0), use_tqdm=False)
    assert len(ok[0].outputs[0].token_ids) == 3


def test_max_model_len_too_big_for_cache_is_refused(tmp_path):
    path = make_tiny_model(tmp_path / "m", max_position_embeddings=4096)
    # 2 layers * 2 kv heads * 16 dims * 4 bytes * 2 (k,v) = 512 B per token -> 16 KiB holds 32 tokens.
    with pytest.raises(ValueError, match="max_model_len=4096.*kv_cache_memory"):
        LLM(path, dtype="float32", max_model_len=4096, kv_cache_memory=16 << 10)
    capped = LLM(path, dtype="float32", kv_cache_memory=64 << 10)
    assert capped.llm_engine.max_model_len == 128
