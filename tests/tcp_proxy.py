"""A loopback TCP forwarder: `python tcp_proxy.py LISTEN_PORT TARGET_PORT [DELAY_S]`.

The S3 fault tests put it between DVC and the S3 server and SIGKILL it mid-push: to DVC the
server has stopped (connections reset, then refused), while the bucket behind it keeps what
was really written. Restarting the proxy on the same port brings the "server" back.
DELAY_S slows each 16 KiB chunk, so a push is reliably still running when the proxy dies.
"""

from __future__ import annotations

import socket
import sys
import threading
import time


def pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
    try:
        while data := src.recv(16384):
            if delay:
                time.sleep(delay)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main() -> None:
    listen_port, target_port = int(sys.argv[1]), int(sys.argv[2])
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", listen_port))
    srv.listen(64)
    while True:
        client, _ = srv.accept()
        upstream = socket.create_connection(("127.0.0.1", target_port))
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pipe, args=(a, b, delay), daemon=True).start()


if __name__ == "__main__":
    main()
