"""``read_gguf_index`` reads the same tensor table and bytes as the ``gguf`` package's own reader."""
import numpy as np
import pytest
from gguf import GGUFReader

from pagedllm.loader.sources import BundledPackageSource
from pagedllm.loader.gguf_index import read_gguf_index


def test_tensor_table_equals_gguf_reader():
    path = BundledPackageSource().resolve("smollm2")  # the file itself: no conversion
    architecture, tensors = read_gguf_index(path)
    reference = GGUFReader(path)
    assert architecture == "llama" and len(tensors) == len(reference.tensors)
    for i, (ours, theirs) in enumerate(zip(tensors, reference.tensors)):
        assert (ours.name, ours.qtype, ours.shape) == (theirs.name, int(theirs.tensor_type),
                                                        tuple(int(d) for d in theirs.shape))
        assert ours.data.nbytes == theirs.n_bytes
        if i in (0, 1, len(tensors) // 2, len(tensors) - 1):  # the bytes of a few (each read is a copy)
            assert np.array_equal(ours.data.reshape(-1), np.asarray(theirs.data).view(np.uint8).reshape(-1))


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    fake = tmp_path / "x.gguf"
    fake.write_bytes(b"GGML" + bytes(40))
    with pytest.raises(ValueError, match="not a GGUF v2/v3 file"):
        read_gguf_index(fake)
