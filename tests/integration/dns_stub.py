"""A minimal authoritative DNS server for tests: one name, several A records, UDP and TCP.

What docker compose's embedded DNS does for ``--scale`` (and a Kubernetes headless Service), on a
free port of this machine: the gateway's channel gets ``dns://127.0.0.1:<port>/<name>:<grpc
port>`` and gRPC's own resolver (c-ares) asks this server, so the test exercises the real
"one DNS name resolves to several replicas" path, not a static address list. Every other query
(AAAA, TXT, SRV, other names) is answered NOERROR with no records.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections.abc import Sequence

TYPE_A, CLASS_IN = 1, 1


def _question(data: bytes) -> tuple[str, int, int, int]:
    """(name, qtype, qclass, end offset) of the first question."""
    labels, i = [], 12
    while data[i]:
        n = data[i]
        labels.append(data[i + 1:i + 1 + n].decode("ascii"))
        i += 1 + n
    qtype, qclass = struct.unpack("!HH", data[i + 1:i + 5])
    return ".".join(labels).lower(), qtype, qclass, i + 5


def answer(query: bytes, name: str, addresses: Sequence[str], ttl: int = 1) -> bytes:
    (qid, flags), (qname, qtype, qclass, end) = struct.unpack("!HH", query[:4]), _question(query)
    records = list(addresses) if qname == name.lower().rstrip(".") and qtype == TYPE_A and qclass == CLASS_IN else []
    # QR=1, opcode and RD copied, AA=1, RA=1, RCODE=0
    out_flags = 0x8000 | (flags & 0x7900) | 0x0400 | 0x0080
    header = struct.pack("!HHHHHH", qid, out_flags, 1, len(records), 0, 0)
    body = b"".join(struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, ttl, 4) + socket.inet_aton(a) for a in records)
    return header + query[12:end] + body


class DnsStub:
    """``with DnsStub("retrieval.test", ["127.0.0.2", "127.0.0.3"]) as dns: dns.port``"""

    def __init__(self, name: str, addresses: Sequence[str], host: str = "127.0.0.1") -> None:
        self.name, self.addresses, self.host = name, list(addresses), host
        self.queries = 0
        stub = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                stub.queries += 1
                sock.sendto(answer(data, stub.name, stub.addresses), self.client_address)

        class Tcp(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                size = struct.unpack("!H", self.rfile.read(2))[0]
                stub.queries += 1
                reply = answer(self.rfile.read(size), stub.name, stub.addresses)
                self.wfile.write(struct.pack("!H", len(reply)) + reply)

        self._udp = socketserver.ThreadingUDPServer((host, 0), Udp)
        self.port = self._udp.server_address[1]
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._tcp = socketserver.ThreadingTCPServer((host, self.port), Tcp)
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self._udp, self._tcp)]

    def target(self, port: int) -> str:
        """The gRPC target that resolves ``name`` through this server."""
        return f"dns://{self.host}:{self.port}/{self.name}:{port}"

    def __enter__(self) -> DnsStub:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        for s in (self._udp, self._tcp):
            s.shutdown()
            s.server_close()
