"""Run wirecat serve's services from Python, with a config: python examples/serve_from_python.py"""

import wirecat

config = wirecat.ServeConfig(
    greeting=["tcp://127.0.0.1:0"],
    echo=["tcp://127.0.0.1:0", "udp://127.0.0.1:0"],
    chat=["tcp://127.0.0.1:0"],
    history=100,
)


def ready(server: wirecat.Server) -> None:
    for name, endpoints in server.endpoints.items():
        print(name, " ".join(map(str, endpoints)), flush=True)


wirecat.run(config, on_ready=ready)  # until Ctrl-C / SIGTERM, then drains
