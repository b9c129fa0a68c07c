"""Metadata round-trip latency, measured with raw Kafka requests (no client
library in the way): Metadata v1 for all topics, N times on one connection
per node, sequentially.

Usage: python metadata_latency.py HOST:PORT [HOST:PORT ...] [--n N]
Prints p50 / p99 / max in milliseconds per node.
"""
import socket
import struct
import sys
import time


def metadata_request(correlation):
    client = b"courier-metadata-latency"
    body = struct.pack(">hhih", 3, 1, correlation, len(client)) + client + struct.pack(">i", -1)
    return struct.pack(">i", len(body)) + body


def read_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def measure(addr, n):
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        sock.sendall(metadata_request(i))
        size = struct.unpack(">i", read_exact(sock, 4))[0]
        payload = read_exact(sock, size)
        times.append(time.perf_counter() - t0)
        if struct.unpack(">i", payload[:4])[0] != i:
            raise RuntimeError("correlation id mismatch")
    sock.close()
    times.sort()
    ms = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1000
    return ms(0.5), ms(0.99), times[-1] * 1000, len(payload)


def main():
    args = sys.argv[1:]
    n = 1000
    if "--n" in args:
        i = args.index("--n")
        n = int(args[i + 1])
        del args[i:i + 2]
    for addr in args:
        p50, p99, worst, size = measure(addr, n)
        print(f"{addr}: Metadata v1 x{n}: p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {worst:.3f} ms ({size} bytes)")


if __name__ == "__main__":
    main()
