"""How the driver and its workers talk: one pickled tuple per message over a socket connection.

Plain ``pickle`` (protocol 5), not multiprocessing's ``ForkingPickler``: torch registers reducers
there that would pass tensors as shared-memory handles, one file descriptor each, which costs
more than copying the few kilobytes of a step's batch. CPU tensors of numpy's dtypes travel as numpy
arrays: torch's own reducer runs a ``torch.save``/``torch.load`` per tensor (~50 us each; a step's
batch has about 15: 0.8 ms to pickle and as much to unpickle, against 0.06 and 0.03 ms).
Messages are ``(kind, *payload)``:
driver -> worker ``forward``, ``logits``, ``pipeline`` (a pipelined step's micro-batches), ``num_blocks``,
``allocate``, ``stats``, ``stop``;
worker -> driver ``hello``, ``ready``, ``error`` and the answers named like their questions.
"""
from __future__ import annotations

import io
import pickle

import torch


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        if (type(obj) is torch.Tensor and obj.device.type == "cpu" and obj.dtype != torch.bfloat16
                and not obj.requires_grad):
            return torch.from_numpy, (obj.numpy(),)
        return NotImplemented  # everything else (bf16 and device tensors included) as pickle does


def encode(message) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=5).dump(message)
    return buffer.getvalue()


def send(conn, message) -> None:
    conn.send_bytes(encode(message))


def recv(conn) -> tuple:
    return pickle.loads(conn.recv_bytes())
