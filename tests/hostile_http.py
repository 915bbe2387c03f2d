"""A misbehaving HTTP server on 127.0.0.1 for the network-deadline tests: raw sockets in threads,
so it can do what no well-behaved server library does (send nothing, stall, drip, lie about sizes).

The path picks the behaviour; `/<mode>/<anything>` works too, so a URL can end in `.png`:
  never    accept, read the request, send nothing
  stall    headers (Content-Length 1000), then nothing
  slow     a whole PNG's headers, then its body one byte every 0.5 s
  endless  200 without Content-Length, data until the client goes away
  huge     Content-Length 2,000,000,000, then close
  short    a PNG's Content-Length, half of its bytes, then close
  second   GET n. 1 served whole, every later GET cut short (HEAD answered whole)
  hop      302 to `never`;  redirbomb  302 to `ok` with an endless body of its own
  dripheaders  header bytes one at a time;  chunkcut  chunked, cut inside a chunk
  404      Not Found;  loop  302 to itself;  ftp  302 to an ftp:// URL;  ok  the PNG, well served
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections import Counter

import numpy as np
from PIL import Image


def png_bytes(w: int = 40, h: int = 48, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class HostileServer:
    """`with HostileServer() as srv: srv.url("slow/x.png")`; every connection is closed on exit."""

    def __init__(self, body: bytes | None = None, drip_s: float = 0.5):
        self.body = body if body is not None else png_bytes()
        self.drip_s = drip_s
        self.gets: Counter = Counter()  # mode -> GET requests seen
        self._stop = threading.Event()
        self._lsock = socket.create_server(("127.0.0.1", 0))
        self._lsock.settimeout(0.1)
        self.port = self._lsock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def __enter__(self) -> "HostileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            for c in self._conns:
                try:
                    c.close()
                except OSError:
                    pass
        self._lsock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._lsock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _wait(self, seconds: float) -> bool:
        """Sleep unless the server stops; -> True when it stopped."""
        return self._stop.wait(seconds)

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, path = head.split(b" ", 2)[:2]
            mode = path.decode().strip("/").split("/", 1)[0].split("?", 1)[0]
            if method == b"GET":
                with self._lock:
                    self.gets[mode] += 1
                    n = self.gets[mode]
            else:
                n = 0
            self._answer(conn, method == b"HEAD", mode, n)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _answer(self, conn: socket.socket, is_head: bool, mode: str, n: int) -> None:
        body = self.body

        def headers(status: str = "200 OK", length: int | None = len(body), extra: str = "") -> None:
            cl = f"Content-Length: {length}\r\n" if length is not None else ""
            conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: image/png\r\n{cl}{extra}Connection: close\r\n\r\n".encode())

        if mode == "never":
            self._wait(60)
        elif mode == "stall":
            headers(length=1000)
            self._wait(60)
        elif mode == "slow":
            headers()
            for k in range(len(body) if not is_head else 0):
                if self._wait(self.drip_s):
                    return
                conn.sendall(body[k:k + 1])
        elif mode == "endless":
            headers(length=None)
            block = b"\0" * 65536
            while not is_head and not self._stop.is_set():
                conn.sendall(block)
                time.sleep(0.005)
        elif mode == "huge":
            headers(length=2_000_000_000)
        elif mode == "short":
            headers()
            if not is_head:
                conn.sendall(body[: len(body) // 2])
        elif mode == "second":
            headers()
            if not is_head:
                conn.sendall(body if n == 1 else body[: len(body) // 3])
        elif mode == "404":
            headers("404 Not Found", length=0)
        elif mode == "hop":  # a redirect to a server that never answers: the deadline spans both
            headers("302 Found", length=0, extra=f"Location: http://127.0.0.1:{self.port}/never/x.png\r\n")
        elif mode == "dripheaders":  # header lines a byte every drip_s: no single read ever times out
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for ch in b"X-Slow: " + b"a" * 1000:
                if self._wait(self.drip_s / 5):
                    return
                conn.sendall(bytes([ch]))
        elif mode == "chunkcut":  # chunked encoding, cut inside a chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                         + f"{len(body):x}\r\n".encode() + body[:100])
        elif mode == "redirbomb":  # a redirect whose own body never ends
            headers("302 Found", length=None, extra=f"Location: http://127.0.0.1:{self.port}/ok/x.png\r\n")
            while not self._stop.is_set():
                conn.sendall(b"\0" * 65536)
                time.sleep(0.005)
        elif mode == "ftp":
            headers("302 Found", length=0, extra=f"Location: ftp://127.0.0.1:{self.port}/x.png\r\n")
        elif mode == "loop":
            headers("302 Found", length=0, extra=f"Location: http://127.0.0.1:{self.port}/loop/again\r\n")
        else:  # ok
            headers()
            if not is_head:
                conn.sendall(body)
