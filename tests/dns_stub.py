"""A DNS server on loopback that answers every A query with fixed addresses, like a Kubernetes headless
Service's name (one A record per pod). gRPC clients reach it with ``dns://127.0.0.1:<port>/<name>:<port>``."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Sequence
from types import TracebackType

A, IN = 1, 1


class DnsStub:
    """Answers A queries for any name with ``addresses`` (TTL 1 s); other query types get no records."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = list(addresses)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self.port = self._socket.getsockname()[1]
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def target(self, name: str, port: int) -> str:
        """The gRPC target that resolves ``name`` here."""
        return f"dns://127.0.0.1:{self.port}/{name}:{port}"

    def __enter__(self) -> DnsStub:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self._socket.recvfrom(512)
            except TimeoutError:
                continue
            self._socket.sendto(self._answer(query), peer)
            self.queries += 1

    def _answer(self, query: bytes) -> bytes:
        ident = struct.unpack(">H", query[:2])[0]
        end = query.index(b"\0", 12) + 5  # the question: the name, then type and class
        question = query[12:end]
        kind = struct.unpack(">H", query[end - 4 : end - 2])[0]
        records = b""
        answers = self.addresses if kind == A else []
        for address in answers:  # a pointer to the question's name, type A, class IN, TTL, 4 bytes
            records += b"\xc0\x0c" + struct.pack(">HHIH", A, IN, 1, 4) + socket.inet_aton(address)
        header = struct.pack(">HHHHHH", ident, 0x8180, 1, len(answers), 0, 0)  # a response, no error
        return header + question + records
