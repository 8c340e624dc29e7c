"""The ``salt.loader`` entry point: tells Salt where halite's loader modules live.

Salt 3006+ calls :func:`loader_dirs` and adds the directories it returns to the returner,
engine and runner search paths, so ``pip install saltext-halite`` is enough; no
``saltutil.sync_*``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

KINDS = ("returners", "engines", "runners", "output")


def _ext_root() -> Path:
    # Installed, ``salt/`` ships as the namespace sub-package ``halite_core.saltext``;
    # in a source checkout it sits beside ``halite_core``.
    spec = importlib.util.find_spec("halite_core.saltext")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if Path(location, "_returners").is_dir():
                return Path(location)
    return Path(__file__).resolve().parent.parent / "salt"


def loader_dirs() -> dict[str, list[str]]:
    """Return ``{"returners": [dir], "engines": [dir], "runners": [dir], "output": [dir]}``."""
    root = _ext_root()
    return {kind: [str(root / f"_{kind}")] for kind in KINDS if (root / f"_{kind}").is_dir()}
