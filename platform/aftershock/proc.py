"""A service process a local stack started: its ports and its log."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import IO


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log: IO[bytes] | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 1500) -> str:
        """The end of its log, so a process that died says why where its death is reported."""
        if self.log is None:
            return ""
        self.log.flush()
        with open(self.log.name, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - chars))
            return f.read().decode(errors="replace")
