"""Where clinpeft caches what it builds once: the demo models and dequantized GGUF bases."""

from __future__ import annotations

import os
from pathlib import Path


def clinpeft_home() -> Path:
    """$CLINPEFT_HOME if set, else ~/.cache/clinpeft."""
    env = os.environ.get("CLINPEFT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clinpeft"
