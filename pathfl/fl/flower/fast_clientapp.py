"""A leaner start of Flower's per-message ClientApp process (``python -m
pathfl.fl.flower.fast_clientapp ARGS``, the same arguments as ``flwr-clientapp``).

flwr 1.42 starts a fresh ``flwr-clientapp`` process for every message and has no long-running
ClientApp mode. That console script imports ``flwr.supernode.cli``, whose ``__init__`` also
imports the whole SuperNode (``flower_supernode``: the SQL state, the object store, ...) which a
ClientApp never uses — about half of the process's import time (measured: 0.7 s of 1.3 s on an
idle core, 5.6 s of 11 s under a load of 20 on 2 cores). This entry point imports only
``flwr.supernode.cli.flwr_clientapp`` and runs the same function with the same arguments.

The SuperExec starts ``flwr-clientapp`` by name from ``PATH``; :func:`install_shim` writes a
two-line ``flwr-clientapp`` script that execs this module into a folder and puts that folder
first on this process's ``PATH`` (:mod:`pathfl.fl.flower.fast_supernode` calls it, so the
SuperExec and its ClientApps inherit it). Any other Flower version than the checked one gets
Flower's own console script (nothing is shimmed).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
import types
from pathlib import Path

CHECKED_FLOWER = "1.42.0"
_CLI = "flwr.supernode.cli"


def _skip_cli_package_init() -> None:
    """Register ``flwr.supernode.cli`` as a bare package (its ``__path__`` only), so importing
    its ``flwr_clientapp`` submodule does not run the package's ``__init__``."""
    if _CLI in sys.modules:
        return
    spec = importlib.util.find_spec(_CLI)
    if spec is None or not spec.submodule_search_locations:
        return
    pkg = types.ModuleType(_CLI)
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__package__ = _CLI
    sys.modules[_CLI] = pkg


def install_shim(folder: Path) -> bool:
    """Write ``FOLDER/flwr-clientapp`` (execs this module with this interpreter) and put
    ``FOLDER`` first on ``os.environ["PATH"]``; False (nothing changed) for another Flower."""
    import flwr

    if getattr(flwr, "__version__", "") != CHECKED_FLOWER:
        return False
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "flwr-clientapp"
    tmp = folder / "flwr-clientapp.tmp"
    argv = [sys.executable, "-P", "-m", __name__]
    tmp.write_text(f'#!/bin/sh\nexec {shlex.join(argv)} "$@"\n')
    tmp.chmod(0o755)
    tmp.replace(script)
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
    return True


def main() -> None:
    _skip_cli_package_init()
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    sys.argv[0] = "flwr-clientapp"
    sys.exit(flwr_clientapp())


if __name__ == "__main__":
    main()
