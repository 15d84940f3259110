"""How the `nezha-bootstrap` process starts and ends (the console script, `python -m nezha_bootstrap` and the
zipapp all start at `start`); standard library only, so that it acts before click and the rest are loaded."""

from __future__ import annotations

import gc
import os
import sys
from typing import NoReturn

# Python's cyclic collector runs after every 700 new container objects: ~60 passes while a run loads its ~300
# modules, whose objects are never garbage (~4% of a run's CPU, measured). A run leaves ~1,000 objects in
# cycles in all, so at 50,000 the collector still runs, rarely, and holds at most a few MB for it.
GC_THRESHOLD = 50_000


def start() -> NoReturn:
    """Run the command line, then end the process as soon as its output is written.

    Python's own shutdown would tear down the ~300 modules a run loads, one by one: ~20 ms of CPU, 8% of a
    whole `run` (measured against the v0 fake). The tool leaves no work for it: no atexit handler, no thread
    that must finish (the resolver's is a daemon), no file that a finaliser removes.
    """
    gc.set_threshold(GC_THRESHOLD)
    from nezha_bootstrap.cli import main

    try:
        main()  # click's standalone mode ends in SystemExit
        code = 0
    except SystemExit as exit_:
        code = exit_status(exit_.code)
    os._exit(flushed(code))


def exit_status(code: object) -> int:
    """The status Python gives `SystemExit(code)`: None is 0, an int itself, anything else is printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def flushed(code: int) -> int:
    """Flush stdout and stderr; when either cannot be written, 120, the status Python's shutdown gives it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe (the reader left), or a stream closed already
            code = 120
    return code
