#!/usr/bin/env python3
"""Cuts the streams recorded by capture.py into seed corpora for the fuzz targets.

usage: seeds.py CAPTURE_DIR CORPUS_DIR [SQL_FILE]

SQL_FILE, if given, holds extra statements for `classify`, NUL-separated (the classifier's
own corpus, dumped as the README describes). Seeds are named by content hash, so re-running
adds nothing twice.
"""

import hashlib
import os
import struct
import sys

SSL, GSS, CANCEL = 80877103, 80877104, 80877102
# pgbench -i streams 1.5 MB of COPY data; a few rows show the shape as well as all of them.
MAX_COPY_DATA = 16
# Per tag, a few single messages seed the per-message mutations.
SINGLES_PER_TAG = 3


def startup_packets(stream):
    """The untagged packets at the start of a client stream, and where the tagged part begins."""
    packets, pos = [], 0
    while pos + 8 <= len(stream):
        n, code = struct.unpack_from(">II", stream, pos)
        packets.append(stream[pos:pos + n])
        pos += n
        if code not in (SSL, GSS):
            break
    return packets, pos


def frames(stream):
    pos, out = 0, []
    while pos + 5 <= len(stream):
        n = struct.unpack_from(">I", stream, pos + 1)[0]
        if n < 4 or pos + 1 + n > len(stream):
            break
        out.append(stream[pos:pos + 1 + n])
        pos += 1 + n
    return out


def trim(msgs):
    """Drops CopyData beyond the first few, keeping everything else in order."""
    kept, copies = [], 0
    for m in msgs:
        if m[:1] == b"d":
            copies += 1
            if copies > MAX_COPY_DATA:
                continue
        kept.append(m)
    return kept


# The passwords the capture run set (README, "Fuzzing"): a seed holds the one that matches.
PASSWORDS = {b"postgres": b"fuzzpw", b"app": b"apppw"}


def user_of(startup):
    fields = startup[8:].split(b"\0")
    return dict(zip(fields[::2], fields[1::2])).get(b"user", b"")


def cstr(b):
    return b.split(b"\0", 1)[0]


class Corpus:
    def __init__(self, root):
        self.root = root

    def add(self, target, data):
        d = os.path.join(self.root, target)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
            f.write(data)


# session: pool mode and silent backend, piece size, after which piece the backend is lost.
SESSION_HEADS = (b"\x00\xff\x00", b"\x01\x07\x00", b"\x02\x20\x03")


def add_session(corpus, client):
    """Seeds for `session`: a client's stream after authentication, under a few set-ups."""
    after_auth = [m for m in client if m[:1] != b"p"]
    if len(after_auth) > 1:
        for head in SESSION_HEADS:
            corpus.add("session", head + b"".join(after_auth))


def main():
    cap, root = sys.argv[1], sys.argv[2]
    corpus = Corpus(root)
    singles = {}
    sql = set()
    names = sorted({f.rsplit(".", 1)[0] for f in os.listdir(cap)})
    for name in names:
        fe = open(os.path.join(cap, name + ".frontend"), "rb").read()
        be = open(os.path.join(cap, name + ".backend"), "rb").read()
        packets, start = startup_packets(fe)
        for p in packets:
            corpus.add("startup", p)
        # The server answers each SSLRequest / GSSENCRequest with one byte ('N': refused).
        be_start = sum(1 for p in packets if struct.unpack_from(">I", p, 4)[0] in (SSL, GSS))
        client = trim(frames(fe[start:]))
        server = trim(frames(be[be_start:]))
        if client:
            corpus.add("frontend", b"".join(client))
            add_session(corpus, client)
            # frame: a 4-byte limit (1 MiB) and a 2-byte cut, then the stream.
            corpus.add("frame", struct.pack("<IH", 1 << 20, 7) + b"".join(client))
        if server:
            corpus.add("backend", b"".join(server))
            corpus.add("frame", struct.pack("<IH", 1 << 20, 300) + b"".join(server))
        for direction, msgs in (("frontend", client), ("backend", server)):
            for m in msgs:
                key = (direction, m[:1])
                if singles.get(key, 0) < SINGLES_PER_TAG:
                    singles[key] = singles.get(key, 0) + 1
                    corpus.add(direction, m)
        # SCRAM: SASLInitialResponse, SASLResponse / AuthenticationSASLContinue, SASLFinal.
        sasl = [m[5:] for m in client if m[:1] == b"p"]
        auth = {struct.unpack_from(">i", m, 5)[0]: m[9:] for m in server if m[:1] == b"R"}
        if sasl and 11 in auth:
            body = sasl[0]
            mech = cstr(body)
            client_first = body[len(mech) + 5:]
            client_final = sasl[1] if len(sasl) > 1 else b""
            # The target skips iteration counts above 64 on the client side (PBKDF2 is slow).
            server_first = auth[11].replace(b"i=4096", b"i=16")
            server_final = auth.get(12, b"")
            password = PASSWORDS.get(user_of(packets[-1]), b"wrong")
            corpus.add("scram", b"\0".join(
                [client_first, client_final, server_first, server_final, password]))
        for m in client:
            if m[:1] == b"Q":
                sql.add(cstr(m[5:]))
            elif m[:1] == b"P":
                name = cstr(m[5:])
                sql.add(cstr(m[5 + len(name) + 1:]))
    if len(sys.argv) > 3:
        sql.update(s for s in open(sys.argv[3], "rb").read().split(b"\0") if s)
    for s in sql:
        corpus.add("classify", s)


if __name__ == "__main__":
    main()
