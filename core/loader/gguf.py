"""Convert a GGUF file, once, into a cached Hugging Face-style folder.

The engine loads one format (config.json + safetensors with HF parameter names + tokenizer
files); GGUF is turned into it on first use. Dequantizing takes seconds, so the result is
cached, keyed by the file's absolute path, size and mtime (never its content: hashing 100 MB
on every start would cost more than the load itself).
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_ENV = "PAGEDLLM_CACHE_DIR"
# Bump when the converted folder's layout or content changes: old cache entries are then ignored.
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"


def cache_root() -> Path:
    """``$PAGEDLLM_CACHE_DIR``, default ``~/.cache/pagedllm``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "pagedllm"


def converted_dir(gguf_path: str | os.PathLike) -> Path:
    """Where the conversion of ``gguf_path`` lives (whether it exists yet or not)."""
    path = Path(gguf_path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|v{FORMAT_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{path.stem}-{digest}"


def convert_gguf(gguf_path: str | os.PathLike) -> str:
    """Return a folder with config.json, tokenizer files and float32 ``model.safetensors``.

    A cached conversion is reused without opening the GGUF. Concurrent callers (several
    processes starting at once) are serialised by a file lock; the folder appears atomically.
    """
    path = Path(gguf_path)
    if not path.is_file():
        raise ValueError(f"gguf_path={str(gguf_path)!r} is not a file")
    target = converted_dir(path)
    if target.is_dir():
        return str(target)

    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_dir():  # another process finished it while we waited
            return str(target)
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        try:
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the cache may be shared
            _convert_into(path.resolve(), tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info(
            "Converted GGUF %s to %s in %.1f s", path.name, target, time.perf_counter() - started
        )
    return str(target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _convert_into(gguf: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    folder, name = str(gguf.parent), gguf.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    meta_model = _meta_model(config)
    if not getattr(config, "architectures", None):  # GGUF has none; the engine picks models by it
        config.architectures = [type(meta_model).__name__]
    tensors = _dequantized_tensors(gguf, meta_model)
    # safetensors refuses shared or non-contiguous storage; float32 is the engine's input format.
    tensors = {k: v.to(torch.float32).contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt", "source": name})
    del tensors
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    try:
        GenerationConfig.from_model_config(config).save_pretrained(out)
    except Exception as error:  # optional file: the engine falls back to config.json
        logger.debug("No generation_config.json for %s: %s", name, error)
    for file in out.iterdir():
        file.chmod(0o666 & ~_umask())


def _dequantized_tensors(gguf: Path, meta_model) -> dict:
    """GGUF tensors as float tensors named like the HF model's state dict.

    transformers' ``load_gguf_checkpoint`` does the renaming and the llama q/k un-permute.
    Since 4.47 it needs ``model_to_load`` (a model to read parameter names from; one on the
    meta device costs no memory). Older versions (4.45/4.46) build the mapping themselves.
    """
    import torch
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    kwargs = {"return_tensors": True}
    params = inspect.signature(load_gguf_checkpoint).parameters
    if "model_to_load" in params:
        kwargs["model_to_load"] = meta_model
    if "torch_dtype" in params:
        kwargs["torch_dtype"] = torch.float32
    tensors = load_gguf_checkpoint(str(gguf), **kwargs)["tensors"]
    if not tensors:
        raise ValueError(f"gguf_path={str(gguf)!r}: no tensor could be mapped to Hugging Face names")
    return tensors


def _meta_model(config):
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    with torch.device("meta"):
        try:
            return AutoModelForCausalLM.from_config(config)
        except ValueError:  # not a causal LM (an encoder): its base model names the tensors
            return AutoModel.from_config(config)
