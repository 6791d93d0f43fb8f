#!/usr/bin/env python3
"""Relays TCP connections to a PostgreSQL server and records each direction's bytes.

Used to make the seed corpora from real traffic (see README, "Fuzzing"): every accepted
connection N writes OUT/N.frontend (client to server) and OUT/N.backend (server to client).

usage: capture.py LISTEN_PORT SERVER_PORT OUT_DIR
"""

import os
import socket
import sys
import threading


def pump(src, dst, path):
    # One thread per direction: the protocol is not strictly request/response (COPY, notices).
    with open(path, "wb") as log:
        while True:
            try:
                chunk = src.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            log.write(chunk)
            log.flush()
            try:
                dst.sendall(chunk)
            except OSError:
                break
    # Pass the half-close on so the other side sees the end of the stream.
    for s in (dst, src):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main():
    listen_port, server_port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    os.makedirs(out, exist_ok=True)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", listen_port))
    lsock.listen(64)
    n = 0
    while True:
        client, _ = lsock.accept()
        server = socket.create_connection(("127.0.0.1", server_port))
        base = os.path.join(out, f"{n:04d}")
        n += 1
        threading.Thread(target=pump, args=(client, server, base + ".frontend"), daemon=True).start()
        threading.Thread(target=pump, args=(server, client, base + ".backend"), daemon=True).start()


if __name__ == "__main__":
    main()
