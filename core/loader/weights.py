"""Stream a checkpoint's tensors one at a time, so loading never holds two copies of a model."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """The weight files of ``folder``, in load order; safetensors are preferred over .bin."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"folder={str(folder)!r} is not a folder")
    files = _from_index(root, SAFETENSORS_INDEX)
    if files:
        return files
    if (root / SAFETENSORS_FILE).is_file():
        return [root / SAFETENSORS_FILE]
    others = sorted(root.glob("*.safetensors"))
    if others:
        return others
    files = _from_index(root, BIN_INDEX) or sorted(root.glob("pytorch_model*.bin"))
    if files:
        return files
    raise ValueError(
        f"folder={str(folder)!r} has no weights: looked for {SAFETENSORS_INDEX}, "
        f"{SAFETENSORS_FILE}, *.safetensors, {BIN_INDEX} and pytorch_model*.bin"
    )


def _from_index(root: Path, index_name: str) -> list[Path]:
    index = root / index_name
    if not index.is_file():
        return []
    weight_map = json.loads(index.read_text())["weight_map"]
    files = [root / name for name in sorted(set(weight_map.values()))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"{index} names shards that are missing: {', '.join(missing)}")
    return files


def iterate_weights(folder: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of the checkpoint in ``folder``, lazily.

    safetensors are memory-mapped and read one tensor at a time; ``.bin`` files are loaded
    with ``weights_only=True`` (no arbitrary code from pickles) and ``mmap`` when possible.
    """
    for file in checkpoint_files(folder):
        if file.suffix == ".safetensors":
            yield from _iterate_safetensors(file)
        else:
            yield from _iterate_bin(file)


def _iterate_safetensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt", device="cpu") as handle:
        for name in handle.keys():
            yield name, handle.get_tensor(name)


def _iterate_bin(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (pre-zip) serialization cannot be memory-mapped
        state = torch.load(file, map_location="cpu", weights_only=True)
    try:
        yield from state.items()
    finally:
        del state


def checkpoint_names(folder: str | os.PathLike) -> list[str]:
    """The tensor names of a checkpoint (safetensors: read from the header, no tensor data)."""
    files = checkpoint_files(folder)
    if any(file.suffix != ".safetensors" for file in files):
        return [name for name, _ in iterate_weights(folder)]
    from safetensors import safe_open

    names: list[str] = []
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            names.extend(handle.keys())
    return names


def modules_with_tensor(model, folder: str | os.PathLike, suffix: str) -> set[str]:
    """The model's module names that the checkpoint gives a tensor ending in ``suffix`` (``.qweight``,
    ``.weight_scale``: the layers a quantized checkpoint stores quantized), through the model's own name map."""
    modules = set()
    for name in checkpoint_names(folder):
        if name.endswith(suffix):
            for target, _, _ in model.checkpoint_targets(name, None):
                modules.add(target.removesuffix(suffix))
    return modules
