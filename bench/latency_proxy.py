#!/usr/bin/env python3
"""A TCP proxy that adds a one-way delay in each direction, to benchmark clients against a
far-away cache on loopback (this kernel has no netem).

usage: python3 bench/latency_proxy.py LISTEN_PORT TARGET_HOST:PORT ONE_WAY_MS [--window MIB]

Why not ../shared/bench/latency-proxy.py: that one delays each chunk by the right amount,
but through asyncio streams, a queue and two tasks per direction, about 4 task switches per
chunk. With 64 connections of small requests it is the bottleneck: `wrk -t1 -c64` of one
narinfo through it at 5 ms each way gave 14.7 ms mean latency instead of 10 (4,334 req/s
instead of ~6,400), and even one connection 11.2 ms, because epoll rounds every timer up
to the next millisecond. This one uses asyncio protocols: one `call_at` per burst of due
chunks, no tasks, no queue objects.

What it models, per connection:
- every chunk read from one side is written to the other ONE_WAY_MS after it was read,
  in order (a pipe with a propagation delay and no bandwidth limit of its own);
- the TCP handshake costs one round trip: the kernel completes the client's connect at
  once, so data the client sends is held until 2 × ONE_WAY_MS after the accept, plus the
  one-way delay (a real client's first request reaches the server 3 one-way delays after
  its SYN);
- a window: at most WINDOW bytes (default 16 MiB) in flight per direction; past that the
  proxy stops reading that side (TCP's flow control), so the rate of one connection is at
  most WINDOW / ONE_WAY_MS (3.2 GB/s at 5 ms, 640 MB/s at 25 ms).
Timers: epoll waits whole milliseconds, rounded up; a flush is scheduled half a
millisecond early and sends every chunk due within the next half millisecond, so each
chunk's delay is right on average, within ±0.5 ms.

It prints `proxy 127.0.0.1:PORT -> TARGET, +D ms each way` once listening; stop it with
SIGTERM or SIGINT.
"""

import argparse
import asyncio
import collections
import signal
import socket

SLACK = 0.0005  # s: half of epoll's timer granularity


class Direction:
    """Chunks read from one side, waiting for their due time to be written to the other."""

    def __init__(self, loop, delay, window, source):
        self.loop = loop
        self.delay = delay
        self.window = window
        self.source = source  # the Side read from
        self.queue = collections.deque()  # (due, bytes); b"" = EOF, None = close
        self.queued = 0
        self.full = False
        self.not_before = 0.0  # earliest send time (the handshake, for client → server)
        self.sink = None  # transport written to; None until connected
        self.timer = None

    def push(self, data):
        due = max(self.loop.time(), self.not_before) + self.delay
        self.queue.append((due, data))
        self.queued += len(data or b"")
        if self.queued > self.window and not self.full:
            self.full = True
            self.source.hold("window")
        self.schedule()

    def schedule(self):
        if self.timer is None and self.queue and self.sink is not None:
            self.timer = self.loop.call_at(self.queue[0][0] - SLACK, self.flush)

    def flush(self):
        self.timer = None
        horizon = self.loop.time() + SLACK
        while self.queue and self.queue[0][0] <= horizon:
            _, data = self.queue.popleft()
            self.queued -= len(data or b"")
            if self.sink.is_closing():
                continue
            if data:
                self.sink.write(data)
            elif data is not None and self.sink.can_write_eof():
                self.sink.write_eof()
            else:
                self.sink.close()
        if self.full and self.queued <= self.window // 2:
            self.full = False
            self.source.release("window")
        self.schedule()

    def attach(self, sink):
        self.sink = sink
        self.schedule()

    def cancel(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()


class Side(asyncio.Protocol):
    """One socket of a proxied connection; what it reads goes into `out`."""

    def __init__(self, loop, delay, window):
        self.transport = None
        self.other = None
        self.out = Direction(loop, delay, window, self)
        self.holds = set()  # why reading is paused: "window", "sink"

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.holds:
            transport.pause_reading()

    def hold(self, reason):
        if not self.holds and self.transport is not None:
            self.transport.pause_reading()
        self.holds.add(reason)

    def release(self, reason):
        self.holds.discard(reason)
        if not self.holds and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data):
        self.out.push(data)

    def eof_received(self):
        self.out.push(b"")
        return True  # keep our write half open until the other side's EOF is delivered

    def connection_lost(self, exc):
        """Nothing can be written to us any more; what we sent still goes out, then the
        other side is closed."""
        self.other.out.cancel()
        self.out.push(None)

    # our write buffer is full: stop reading the side that feeds it
    def pause_writing(self):
        self.other.hold("sink")

    def resume_writing(self):
        self.other.release("sink")


def make_pair(loop, delay, window):
    client, server = Side(loop, delay, window), Side(loop, delay, window)
    client.other, server.other = server, client
    return client, server


async def connect_upstream(loop, client, server, host, port):
    try:
        await loop.create_connection(lambda: server, host, port)
    except OSError:
        client.transport.close()
        return
    client.out.attach(server.transport)
    server.out.attach(client.transport)


async def serve(listen, target, delay, window):
    loop = asyncio.get_running_loop()
    host, port = target.rsplit(":", 1)
    connecting = set()  # strong references to the connect tasks

    def accept():
        client, server = make_pair(loop, delay, window)
        client.out.not_before = loop.time() + 2 * delay
        task = loop.create_task(connect_upstream(loop, client, server, host, int(port)))
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    server = await loop.create_server(accept, "127.0.0.1", listen, backlog=1024)
    print(f"proxy 127.0.0.1:{listen} -> {target}, +{delay * 1000:g} ms each way", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("listen_port", type=int)
    ap.add_argument("target", help="HOST:PORT")
    ap.add_argument("one_way_ms", type=float)
    ap.add_argument("--window", type=float, default=16, metavar="MIB",
                    help="bytes in flight per direction and connection (default 16 MiB)")
    a = ap.parse_args()
    asyncio.run(serve(a.listen_port, a.target, a.one_way_ms / 1000, int(a.window * (1 << 20))))


if __name__ == "__main__":
    main()
