"""A TCP proxy the workers connect through, so a failover can move them to another server
(the harness' stand-in for a DNS/sentinel switch): ``switch(port)`` retargets and drops every
open connection, forcing clients to reconnect."""

from __future__ import annotations

import queue
import socket
import threading
import time

from .util import free_port


class Proxy:
    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.port = free_port()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(256)
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.closed = False
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True, name="gauntlet-proxy").start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.upstream), timeout=2)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            self.accepted += 1
            with self.lock:
                self.conns |= {c, u}
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        finally:
            self._close_pair(a, b)

    def _close_pair(self, a: socket.socket, b: socket.socket):
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self.lock:
            self.conns.discard(a)
            self.conns.discard(b)

    def drop_all(self):
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def switch(self, port: int):
        self.upstream = port
        self.drop_all()

    def close(self):
        self.closed = True
        try:
            self.lsock.close()
        except OSError:
            pass
        self.drop_all()


class DelayProxy(Proxy):
    """A Proxy whose bytes arrive ``delay_s`` after they were sent, both ways: a link with that
    latency and the same throughput (e.g. a replica's link to its primary in another zone)."""

    def __init__(self, upstream_port: int, delay_s: float):
        self.delay = delay_s
        self.severed = threading.Event()
        super().__init__(upstream_port)

    def sever(self):
        """The link dies with what is in flight (a host crash, a partition): undelivered bytes
        are dropped, every connection closed."""
        self.severed.set()
        self.close()

    def _pipe(self, a: socket.socket, b: socket.socket):
        q: queue.Queue = queue.Queue()

        def deliver():
            while True:
                item = q.get()
                if item is None:
                    return
                due, d = item
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if self.severed.is_set():
                    return
                try:
                    b.sendall(d)
                except OSError:
                    return

        t = threading.Thread(target=deliver, daemon=True)
        t.start()
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                q.put((time.monotonic() + self.delay, d))
        except OSError:
            pass
        finally:
            q.put(None)
            t.join(self.delay + 5)
            self._close_pair(a, b)
