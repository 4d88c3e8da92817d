"""The documented import order (``import peft_vision_ext`` first) is quiet on every supported PEFT: the log filters
are in place before anything imports bitsandbytes, whose CPU backend logs at import time on AVX512-BF16 machines
(peft <= 0.21 imports bitsandbytes in ``import peft``, so a filter installed after it comes too late)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHECK = textwrap.dedent("""
    import importlib.abc, logging, sys

    seen = {}

    class Watch(importlib.abc.MetaPathFinder):  # at the first import of bitsandbytes: every logger's filters
        def find_spec(self, name, path=None, target=None):
            if name == "bitsandbytes" and "filters" not in seen:
                seen["filters"] = {logger: [type(f).__name__ for f in getattr(obj, "filters", [])]
                                   for logger, obj in logging.root.manager.loggerDict.items()}
            return None

    sys.meta_path.insert(0, Watch())
    assert "bitsandbytes" not in sys.modules and "peft" not in sys.modules
    import peft_vision_ext  # the documented first line
    import peft  # noqa: F401
    import bitsandbytes  # noqa: F401
    from peft_vision_ext.noise import KNOWN_NOISE
    print({logger: seen.get("filters", {}).get(logger, []) for logger in KNOWN_NOISE} if seen else None)
""")


def test_filters_are_installed_before_bitsandbytes_is_imported() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    filters = eval(done.stdout.strip().splitlines()[-1])  # noqa: S307 - our own subprocess's repr
    assert filters, "bitsandbytes was never imported, or was imported before the watch was installed"
    assert all("_DropMessage" in names for names in filters.values()), filters
