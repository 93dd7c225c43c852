"""``python -m services.proxy [--env-file FILE] [--port N] ...``"""

import sys

from services.config import ProxyConfig, load_config, worker_count
from services.http import serve
from services.proxy.app import make_proxy_app, metrics_listener, server_options
from services.workers import Worker


def main() -> None:
    try:
        config = load_config(ProxyConfig)
        options = server_options(config)
        metrics = metrics_listener(config)
    except (ValueError, OSError) as error:  # OSError: a certificate file missing or unreadable
        sys.exit(f"proxy: bad configuration: {error}")
    # With several workers the lambda runs in each of them, after the fork.
    serve(lambda: make_proxy_app(config, Worker.current()), config.listen_address, config.port,
          "proxy", options, also=[metrics] if metrics else [], workers=worker_count(config),
          stop_seconds=config.stop_seconds)


if __name__ == "__main__":
    main()
