"""How the driver and its workers talk: one pickled tuple per message over a socket connection.

Plain ``pickle`` (protocol 5), not multiprocessing's ``ForkingPickler``: torch registers reducers
there that would pass tensors as shared-memory handles, one file descriptor each, which costs
more than copying the few kilobytes of a step's batch. Messages are ``(kind, *payload)``:
driver -> worker ``forward``, ``logits``, ``num_blocks``, ``allocate``, ``stats``, ``stop``;
worker -> driver ``hello``, ``ready``, ``error`` and the answers named like their questions.
"""
from __future__ import annotations

import pickle


def send(conn, message: tuple) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=5))


def recv(conn) -> tuple:
    return pickle.loads(conn.recv_bytes())
