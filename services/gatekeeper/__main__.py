"""``python -m services.gatekeeper [--env-file FILE] [--port N] ...``"""

import ssl
import sys

from services.config import GatekeeperConfig, load_config, worker_count
from services.gatekeeper.app import make_gatekeeper_app, metrics_listener, request_log
from services.gatekeeper.keys import KeyRing, SharedBuckets
from services.gatekeeper.metrics import gatekeeper_metrics
from services.gatekeeper.redirect import make_redirect_app
from services.gatekeeper.tls import ServerCertificate, proxy_client_context
from services.http import Listener, ServerOptions, serve


def main() -> None:
    try:
        config = load_config(GatekeeperConfig)
        config.check_startup()
        KeyRing(config.keys_file, config.inline_api_key())  # refuse to start on a bad keys file
        certificate = ServerCertificate(config.tls_cert, config.tls_key) if config.tls_cert \
            else None
        if config.proxy_over_tls:
            proxy_client_context(config.proxy_ca, config.proxy_client_cert,
                                 config.proxy_client_key)
        metrics = metrics_listener(config)
    except (ValueError, OSError, ssl.SSLError) as error:
        sys.exit(f"gatekeeper: bad configuration: {error}")
    requests = request_log(config)
    options = ServerOptions(ssl_context=certificate.context if certificate else None,
                            idle_timeout=config.idle_timeout, body_timeout=config.body_timeout,
                            max_header_bytes=config.max_header_bytes,
                            max_connections=config.max_connections,
                            on_refused=(lambda: gatekeeper_metrics().connection_refused())
                            if metrics else None,
                            proxy_protocol_from=config.proxy_protocol_networks)
    also = [metrics] if metrics else []
    if config.redirect_port:
        # The redirect answers from the headers alone: short timeouts, the same header cap.
        # No PROXY header is read there (nor on the metrics port): a balancer sends it only to
        # the HTTPS port.
        redirect_options = ServerOptions(idle_timeout=min(config.idle_timeout, 10.0),
                                         body_timeout=min(config.body_timeout, 10.0),
                                         max_header_bytes=config.max_header_bytes,
                                         max_connections=config.max_connections)
        also.append(Listener(make_redirect_app(config.port, requests), config.listen_address,
                             config.redirect_port, redirect_options, "redirect to https"))
    # Made before the workers are forked, so that they all share it: the lambda runs in each.
    buckets = SharedBuckets()
    serve(lambda: make_gatekeeper_app(config, certificate, requests, buckets),
          config.listen_address, config.port, "gatekeeper", options, also,
          workers=worker_count(config), stop_seconds=config.stop_seconds)


if __name__ == "__main__":
    main()
