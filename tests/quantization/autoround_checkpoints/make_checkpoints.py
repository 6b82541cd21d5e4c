"""Writes the GPTQ and AWQ checkpoints beside this file with Intel's auto-round, a real quantization
library from the package registry (gptqmodel and autoawq need CUDA builds to quantize).

    pip install --target /tmp/ar --no-deps auto-round==0.16.1 py-cpuinfo
    pip install --target /tmp/ar-deps datasets        # then delete what the venv already has
    PYTHONPATH=/tmp/ar:/tmp/ar-deps .venv/bin/python -P tests/quantization/autoround_checkpoints/make_checkpoints.py

The source is the tiny Llama of ``model_fixtures.make_tiny_model`` with ``SOURCE`` (seeded, so the
test rebuilds the same weights); auto-round quantizes it zero-shot (``iters=0``: its optimized
round-to-nearest) to 4 bits, group 32, asymmetric, and exports it in its ``auto_gptq`` and
``auto_awq`` formats. Only the files the loader reads are kept (the tokenizer is the bundled one,
copied in by the test), so each checkpoint is ~0.45 MB.
"""
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for model_fixtures

from model_fixtures import make_tiny_model  # noqa: E402

SOURCE = dict(hidden_size=128, intermediate_size=256, vocab_size=256)
FORMATS = {"gptq": "auto_gptq", "awq": "auto_awq"}
KEPT = ("config.json", "quantization_config.json", "generation_config.json", "model.safetensors")


def main() -> None:
    from auto_round import AutoRound

    with tempfile.TemporaryDirectory() as tmp:
        source = make_tiny_model(Path(tmp) / "source", "llama", **SOURCE)
        for name, fmt in FORMATS.items():
            out = Path(tmp) / fmt
            AutoRound(source, bits=4, group_size=32, sym=False, iters=0, device_map="cpu").quantize_and_save(
                str(out), format=fmt)
            written = next(p.parent for p in out.rglob("model.safetensors"))
            (HERE / name).mkdir(exist_ok=True)
            for file in KEPT:
                shutil.copy(written / file, HERE / name / file)
            print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
