"""The app of one of several API processes started by ``tessera serve --api-processes N``.

uvicorn starts each process afresh and calls :func:`app` in it, so the
configuration and the data directory come through the environment, set by
``serve`` before it hands over. Each process has its own runtime (bus and
store connections); they share the listening socket, which the kernel
balances between them. The API keeps no state of its own, so this is the
single-host form of several API processes behind a load balancer: the embedded
bus and store take writers from several processes (every append is its own
``BEGIN IMMEDIATE`` transaction, deduplicated inside it).
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

CONFIG_ENV = "TESSERA_SERVE_CONFIG"
DATA_DIR_ENV = "TESSERA_SERVE_DATA_DIR"
LOG_LEVEL_ENV = "TESSERA_SERVE_LOG_LEVEL"


def app() -> FastAPI:
    from tessera.api.app import create_app
    from tessera.cli import configure_logging
    from tessera.config import load_config
    from tessera.runtime import Runtime

    configure_logging(os.environ.get(LOG_LEVEL_ENV, "warning"))
    config = load_config(os.environ.get(CONFIG_ENV) or None)  # else $TESSERA_CONFIG, the demo
    return create_app(Runtime(config, Path(os.environ[DATA_DIR_ENV])))
