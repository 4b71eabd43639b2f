"""Where the processes of one ``tessera serve`` keep their metrics.

Kept free of ``prometheus_client`` imports: multiprocess mode must be chosen
(``PROMETHEUS_MULTIPROC_DIR`` set) before that library is first imported.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable(data_dir: Path) -> Path | None:
    """Use ``<data dir>/metrics`` for this process and its children; None if it is too late.

    An operator's own ``PROMETHEUS_MULTIPROC_DIR`` wins (it is emptied all the same).
    """
    if "prometheus_client" in sys.modules and not os.environ.get(ENV):
        return None  # metrics already live in this process's memory
    path = Path(os.environ.get(ENV) or data_dir / "metrics")
    if path.exists():
        for child in path.iterdir():
            if child.is_file() and child.suffix == ".db":
                child.unlink()
            elif child.is_dir():
                shutil.rmtree(child)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(path)
    return path
