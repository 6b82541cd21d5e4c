"""One tiny Llama and three PEFT adapters over it (different ranks, targets, rsLoRA), shared by the module."""
import pytest

from lora_fixtures import make_peft_adapter
from model_fixtures import make_tiny_model

ADAPTERS = {  # name: (targets, rank, alpha, rsLoRA)
    "attn-r8": (["q_proj", "k_proj", "v_proj", "o_proj"], 8, 16, False),
    "mlp-r4": (["gate_proj", "up_proj", "down_proj"], 4, 8, True),
    "all-r16": (["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 16, 16, False),
}


@pytest.fixture(scope="module")
def tiny_llama_adapters(tmp_path_factory):
    """(base model folder, {name: (adapter folder, PEFT merged oracle)})."""
    root = tmp_path_factory.mktemp("lora")
    base = make_tiny_model(root / "base", "llama")
    adapters = {}
    for i, (name, (targets, r, alpha, rslora)) in enumerate(ADAPTERS.items()):
        folder = root / name
        adapters[name] = (str(folder), make_peft_adapter(base, folder, targets, r=r, alpha=alpha, seed=i,
                                                         use_rslora=rslora))
    return base, adapters
