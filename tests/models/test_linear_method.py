"""The linear-method slot: a layer creates, applies and post-processes its weight only through its
method, so a quantized format or LoRA can replace the dense one; ``F.linear`` is the oracle."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedllm.models.layers.linear import DenseLinearMethod, QKVParallelLinear, RowParallelLinear


class Float64Method(DenseLinearMethod):
    """Stores the weight in float64 and counts what the layer asks of it."""

    def __init__(self):
        self.calls = {"create": 0, "apply": 0, "after_loading": 0}

    def create_weights(self, layer, input_size, output_size, bias):
        self.calls["create"] += 1
        super().create_weights(layer, input_size, output_size, bias)
        layer.weight.data = layer.weight.data.double()

    def apply(self, layer, x):
        self.calls["apply"] += 1
        return F.linear(x.double(), layer.weight, None if layer.bias is None else layer.bias.double()).to(x.dtype)

    def process_weights_after_loading(self, layer):
        self.calls["after_loading"] += 1


def test_a_layer_goes_through_its_method():
    torch.manual_seed(0)
    method = Float64Method()
    layer = RowParallelLinear(8, 4, bias=True, linear_method=method)
    w, b = torch.randn(4, 8), torch.randn(4)
    layer.weight.weight_loader(layer.weight, w)
    layer.bias.weight_loader(layer.bias, b)
    layer.prepack_for_cpu()
    x = torch.randn(3, 8)
    out = layer(x)
    assert layer.weight.dtype == torch.float64
    assert method.calls == {"create": 1, "apply": 1, "after_loading": 1}
    torch.testing.assert_close(out, F.linear(x.double(), w.double(), b.double()).float())


def test_fused_loaders_write_through_the_method_s_parameters():
    torch.manual_seed(0)
    layer = QKVParallelLinear(8, 2, 4, 2, linear_method=Float64Method())
    q, k, v = torch.randn(8, 8), torch.randn(4, 8), torch.randn(4, 8)
    for shard, t in zip("qkv", (q, k, v)):
        layer.weight.weight_loader(layer.weight, t, shard)
    x = torch.randn(5, 8)
    torch.testing.assert_close(layer(x), F.linear(x, torch.cat([q, k, v])))
