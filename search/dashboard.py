"""`vaesearch dashboard`: Optuna's dashboard on a search's study, stopped by Ctrl-C at any moment."""

from __future__ import annotations

import socket
import threading
from wsgiref.simple_server import WSGIServer, make_server


class _Server(WSGIServer):
    address_family = socket.AF_INET


class _Server6(WSGIServer):
    address_family = socket.AF_INET6


def serve(storage: str, host: str, port: int) -> None:
    """Serve until Ctrl-C, which then stops it even while a page is loading.

    optuna_dashboard.run_server serves on the main thread, where wsgiref's request handler catches
    everything (a bare except) and reports it as the request's error: a Ctrl-C that lands during a request
    is swallowed and the server goes on. Here a thread serves and the main thread only waits, so the
    KeyboardInterrupt is raised where nothing catches it.
    """
    import optuna_dashboard

    app = optuna_dashboard.wsgi(storage)
    httpd = make_server(host, port, app, server_class=_Server6 if ":" in host else _Server)
    thread = threading.Thread(target=httpd.serve_forever, name="dashboard", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    finally:
        httpd.shutdown()  # the request in hand, if any, ends first
        httpd.server_close()
