"""``SocketLink.recv_now``: the next message if it has begun to arrive, None at once otherwise.

A host thread woken because its link turned readable reads it with this (one system call where a probe
and a read took two: see ``kit.lease``); the reader thread may have read the message first, so "nothing
here" must be an answer, not a wait. A message that has only begun to arrive is read whole, as ``recv``
reads it, however its bytes are cut. Real sockets: a socket pair, written by hand in chunks.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flamepy_core.kit import links
from flamepy_core.kit.links import Oversized, SocketLink

PREAMBLE = b"TEST"
LIMIT = 1 << 20


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, SocketLink]]:
    writer, reader = socket.socketpair()
    link = SocketLink(reader, LIMIT, preamble=PREAMBLE, dialled=False)
    try:
        yield writer, link
    finally:
        writer.close()
        link.close()


def _framed(messages: list[bytes]) -> bytes:
    return b"".join(links._LENGTH.pack(len(m)) + m for m in messages)


def _sending(writer: socket.socket, data: bytes, cuts: list[int]) -> threading.Thread:
    """A started thread writing ``data`` in chunks cut at ``cuts`` (then the rest), with pauses between them."""
    chunks, at = [], 0
    for cut in cuts:
        if at >= len(data):
            break
        chunks.append(data[at : at + cut])
        at += cut
    chunks.append(data[at:])

    def write() -> None:
        for chunk in chunks:
            writer.sendall(chunk)
            time.sleep(0.0005)

    sender = threading.Thread(target=write)
    sender.start()
    return sender


def test_nothing_there_is_none_at_once_and_the_link_still_reads(pair: tuple[socket.socket, SocketLink]) -> None:
    writer, link = pair
    assert link.recv_now() is None
    writer.sendall(PREAMBLE + _framed([b"hello"]))
    assert bytes(link.recv_now()) == b"hello"  # type: ignore[arg-type]
    assert link.recv_now() is None
    assert not link.pending()


def test_a_message_begun_is_read_whole_as_the_rest_comes(pair: tuple[socket.socket, SocketLink]) -> None:
    writer, link = pair
    data = PREAMBLE + _framed([b"x" * 300_000])
    writer.sendall(data[:10])  # the preamble and a part of the length only
    rest = threading.Timer(0.05, lambda: writer.sendall(data[10:]))
    rest.start()
    try:
        message = link.recv_now()
    finally:
        rest.join()
    assert message is not None and bytes(message) == b"x" * 300_000


def test_the_peer_gone_is_eof_not_none(pair: tuple[socket.socket, SocketLink]) -> None:
    writer, link = pair
    writer.sendall(PREAMBLE + _framed([b"last"]))
    writer.close()
    assert bytes(link.recv_now()) == b"last"  # type: ignore[arg-type]
    with pytest.raises(EOFError):
        link.recv_now()


def test_a_message_over_the_limit_comes_as_oversized(pair: tuple[socket.socket, SocketLink]) -> None:
    writer, link = pair
    sender = threading.Thread(target=writer.sendall, args=(PREAMBLE + _framed([b"y" * (2 * LIMIT), b"after"]),))
    sender.start()
    try:
        assert select.select([link.sock], [], [], 10)[0], "nothing came within 10 s"
        big = link.recv_now()
        assert isinstance(big, Oversized) and big.size == 2 * LIMIT
        assert bytes(link.recv()) == b"after"  # type: ignore[arg-type]
    finally:
        sender.join()


@settings(max_examples=40, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=3000), min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=1, max_value=5000), max_size=20),
)
def test_any_cut_of_the_bytes_gives_the_messages_in_order(messages: list[bytes], cuts: list[int]) -> None:
    """Whatever chunks the bytes arrive in (written by another thread, with pauses between them), reading
    with ``recv_now`` (None: wait until the socket is readable, then ask again) gives every message once,
    whole and in order, and None once all were read."""
    writer, reader = socket.socketpair()
    link = SocketLink(reader, LIMIT, preamble=PREAMBLE, dialled=False)
    data = PREAMBLE + _framed(messages)
    sender = _sending(writer, data, cuts)
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 10
        while len(got) < len(messages):
            assert time.monotonic() < deadline, f"only {len(got)} of {len(messages)} messages came"
            message = link.recv_now()
            if message is None:
                select.select([reader], [], [], 0.1)
            else:
                got.append(bytes(message))  # type: ignore[arg-type]
        sender.join(10)
        assert got == messages
        assert link.recv_now() is None
    finally:
        sender.join(10)
        writer.close()
        link.close()


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(
        st.one_of(st.integers(0, 3000), st.integers(links._COALESCE - 20, links.HEAD_KEEP + 1100)),
        min_size=1,
        max_size=8,
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=70_000), max_size=12),
)
def test_recv_reads_any_cut_of_the_bytes_whole_and_in_order(sizes: list[int], cuts: list[int]) -> None:
    """The blocking ``recv`` too: a message whole in what one read brought, one cut anywhere (its length
    included), one larger than a read, one over the link's limit (its head kept), in any order and any
    chunks, comes whole and in order."""
    limit = 1000
    writer, reader = socket.socketpair()
    link = SocketLink(reader, limit, preamble=PREAMBLE, dialled=False)
    messages = [bytes([index % 251]) * size for index, size in enumerate(sizes)]
    data = PREAMBLE + _framed(messages)
    sender = _sending(writer, data, cuts)
    try:
        for message in messages:
            got = link.recv()
            if len(message) > limit + links.HEAD_KEEP:
                assert isinstance(got, Oversized) and got.size == len(message)
                assert got.head == message[: links.HEAD_KEEP]
            else:
                assert bytes(got) == message  # type: ignore[arg-type]
        assert not link.pending()
    finally:
        sender.join(10)
        writer.close()
        link.close()
