"""A small blocking client of the qnllm wire protocol (docs/protocol.md), written from the spec
for the `coordinate`, `metrics_query` and `subscribe` requests the Python bindings' Client
does not offer."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple

MAGIC = b"QNLM"
HEADER = struct.Struct("<4sBBHQII")  # magic, version, kind, flags, request id, deadline, length

HELLO, WELCOME, ERROR = 0x01, 0x02, 0x06
REASON, RESULT = 0x20, 0x21
COORDINATE, COORDINATION_RESULT = 0x30, 0x31
METRICS_QUERY, METRICS = 0x50, 0x51
SUBSCRIBE, EVENT = 0x52, 0x53

# Error codes (docs/protocol.md, "Error codes") the tests look for.
INVALID_INPUT = 32
NO_ENGINE_AVAILABLE = 34


class RemoteError(Exception):
    """An `error` frame from the hub: its code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"hub error {code}: {message}")
        self.code = code
        self.message = message


class Wire:
    """One client connection: hello on connect, then one request at a time, except for the
    events of one subscription, which `next_event` reads."""

    def __init__(self, address: str, *, name: str = "teachers-test", timeout: float = 30.0) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.next_id = 1
        self.events: List[Dict[str, Any]] = []
        self.subscription: Optional[int] = None
        self._send(HELLO, 0, json.dumps({"protocol": 1, "role": "client", "name": name}).encode())
        kind, _, body = self._recv()
        if kind != WELCOME:
            raise RemoteError(*_error(body)) if kind == ERROR else AssertionError(f"kind {kind:#x}")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Wire":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _send(self, kind: int, request_id: int, body: bytes) -> None:
        self.sock.sendall(HEADER.pack(MAGIC, 1, kind, 0, request_id, 0, len(body)) + body)

    def _exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("the hub closed the connection")
            out += chunk
        return bytes(out)

    def _recv(self) -> Tuple[int, int, bytes]:
        magic, version, kind, _flags, request_id, _deadline, length = HEADER.unpack(self._exact(HEADER.size))
        if magic != MAGIC or version != 1:
            raise AssertionError(f"not a qnllm frame: {magic!r} version {version}")
        return kind, request_id, self._exact(length)

    def request(self, kind: int, body: bytes, want: int) -> bytes:
        """Sends one request and returns the body of its answer (of kind `want`); events of
        the subscription that arrive meanwhile are kept for `next_event`."""
        request_id = self.next_id
        self.next_id += 1
        self._send(kind, request_id, body)
        while True:
            got, rid, reply = self._recv()
            if got == EVENT and rid == self.subscription:
                self.events.append(json.loads(reply))
                continue
            if rid != request_id:
                raise AssertionError(f"answer to request {rid}, expected {request_id} (kind {got:#x})")
            if got == ERROR:
                raise RemoteError(*_error(reply))
            if got != want:
                raise AssertionError(f"answer of kind {got:#x}, expected {want:#x}")
            return reply

    def coordinate(self, encoding: Sequence[float], *, learn: bool = True, teachers: int = 0) -> Dict[str, Any]:
        """`coordinate`: the teachers vote on `encoding`; with `learn` the students learn the
        consensus. Returns the `coordination_result` JSON."""
        body = struct.pack("<BBH", teachers, 1 if learn else 0, 0) + struct.pack(f"<{len(encoding)}f", *encoding)
        return json.loads(self.request(COORDINATE, body, COORDINATION_RESULT))

    def reason(self, encoding: Sequence[float]) -> int:
        """`reason`: returns the label of the result (its first field)."""
        reply = self.request(REASON, struct.pack(f"<{len(encoding)}f", *encoding), RESULT)
        return struct.unpack_from("<I", reply)[0]

    def metrics(self) -> Dict[str, Any]:
        return json.loads(self.request(METRICS_QUERY, b"", METRICS))

    def engines(self) -> List[Dict[str, Any]]:
        return list(self.metrics()["engines"])

    def subscribe(self, topics: Sequence[str]) -> None:
        """Subscribes to `topics`; its events (after the acknowledgement) are read by
        `next_event` or kept while other requests run."""
        request_id = self.next_id
        self.next_id += 1
        self.subscription = request_id
        self._send(SUBSCRIBE, request_id, json.dumps({"topics": list(topics)}).encode())

    def next_event(self) -> Dict[str, Any]:
        """The next event of the subscription (blocks up to the socket's timeout)."""
        if self.events:
            return self.events.pop(0)
        while True:
            kind, rid, body = self._recv()
            if kind == ERROR:
                raise RemoteError(*_error(body))
            if kind == EVENT and rid == self.subscription:
                return json.loads(body)


def _error(body: bytes) -> Tuple[int, str]:
    (code,) = struct.unpack_from("<H", body)
    return code, body[2:].decode("utf-8", "replace")
