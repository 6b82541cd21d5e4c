"""Baichuan and ChatGLM (remote-code configs: the workers read the config class from the folder
themselves) at TP=2 against TP=1, on the folders their own tests build. Multi-process: ``slow``."""
from __future__ import annotations

import pytest

import test_models_baichuan as baichuan
import test_models_chatglm as chatglm
from model_fixtures import SEED_PROMPTS
from tensor_parallel_helpers import TWO_CORES, assert_same_generation, child_pids, run

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not TWO_CORES, reason="tensor_parallel_size=2 needs 2 CPU cores")]
PROMPTS = [p * k for p, k in zip(SEED_PROMPTS, (1, 3, 5, 8))]


def _baichuan(path, name):
    baichuan._write_folder(path, baichuan.CASES[name], baichuan._random_weights(1))


def _chatglm(path, name):
    cfg = dict(chatglm.BASE, **chatglm.VARIANTS[name])
    chatglm.write_checkpoint(path, cfg, chatglm.random_weights(cfg, seed=len(name)))


CASES = [(_baichuan, "baichuan-7b"), (_baichuan, "baichuan2-13b"), (_chatglm, "chatglm2"),
         (_chatglm, "chatglm3-32k"), (_chatglm, "layernorm-post-residual")]


@pytest.mark.parametrize("write,name", CASES, ids=[name for _, name in CASES])
def test_tp2_matches_tp1(write, name, tmp_path):
    write(tmp_path, name)
    ref, (rank0,) = run(str(tmp_path), 1, PROMPTS, 32, prompt_logprobs=1, trust_remote_code=True)
    got, ranks = run(str(tmp_path), 2, PROMPTS, 32, prompt_logprobs=1, trust_remote_code=True)
    assert_same_generation(ref, got)
    assert all(r["param_bytes"] < 0.56 * rank0["param_bytes"] for r in ranks), (ranks, rank0)
    assert child_pids() == []
