"""`bench/compare` as a module, for the bench scripts that use its helpers (processes, free
ports, builds, nginx configurations, CPU accounting): `from compare_module import compare`.

`bench/compare` is a script without a `.py` name, so a plain `import` cannot find it; this
loads it once by path. The scripts run as `python3 bench/<script>.py`, which puts `bench/`
first on `sys.path`, so this module is found without more glue.
"""

import importlib.machinery
import importlib.util
from pathlib import Path

_loader = importlib.machinery.SourceFileLoader("bench_compare", str(Path(__file__).resolve().parent / "compare"))
_spec = importlib.util.spec_from_loader("bench_compare", _loader)
compare = importlib.util.module_from_spec(_spec)
_loader.exec_module(compare)
