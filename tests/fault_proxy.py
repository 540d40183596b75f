"""A TCP proxy that can go silent: it stops forwarding but keeps every socket open.

That is what a cloud NAT that forgot a connection, a partition, or a wedged pooler looks like to
a client: its writes are acknowledged (by the proxy's kernel), nothing ever comes back, and no
error is raised. :meth:`FaultProxy.blackhole` makes every connection open now silent for ever
(and new ones too, until :meth:`FaultProxy.heal`); healed, new connections work again while the
old ones stay dead, as after a NAT forgot them.
"""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["FaultProxy"]


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._generation = 0  # connections of an older generation than _alive_from are dead
        self._alive_from = 0
        self._silent = False
        self._sockets: list[socket.socket] = []
        self._closed = False

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        """Refuse new connections and reset every open one: the database is gone."""
        self._closed = True
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    s.close()

    def blackhole(self) -> None:
        with self._lock:
            self._silent = True
            self._generation += 1
            self._alive_from = self._generation + 1

    def heal(self) -> None:
        with self._lock:
            self._silent = False
            self._generation += 1

    def _dead(self, generation: int) -> bool:
        with self._lock:
            return self._silent or generation < self._alive_from

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                generation = self._generation
                self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client, generation), daemon=True).start()

    def _serve(self, client: socket.socket, generation: int) -> None:
        if self._dead(generation):
            return  # accepted, then nothing: the socket stays open until the proxy closes
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        with self._lock:
            self._sockets.append(server)
        for src, dst in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(src, dst, generation), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, generation: int) -> None:
        try:
            while data := src.recv(65536):
                if self._dead(generation):
                    return  # swallow, and read no more: the peer's writes pile up unanswered
                dst.sendall(data)
        except OSError:
            pass
        if not self._dead(generation):
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
