"""``python -m services.gatekeeper [--env-file FILE] [--port N] ...``"""

import sys

from services.config import GatekeeperConfig, load_config
from services.gatekeeper.app import make_gatekeeper_app
from services.http import serve


def main() -> None:
    try:
        config = load_config(GatekeeperConfig)
        if len(config.resolved_api_key()) < 16:
            raise ValueError("the API key must be at least 16 characters")
    except (ValueError, OSError) as error:
        sys.exit(f"gatekeeper: bad configuration: {error}")
    serve(lambda: make_gatekeeper_app(config), config.listen_address, config.port, "gatekeeper")


if __name__ == "__main__":
    main()
