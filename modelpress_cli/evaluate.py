"""The task-metric gate: run the user's evaluation on the original and on the round trip."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelpressError

PLACEHOLDER = "{weights}"
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class TaskMetric:
    """The model's own metric before and after compression, and whether the drop is allowed."""

    command: str
    original: float
    compressed: float
    lower_is_better: bool = False
    max_drop: float | None = None

    @property
    def drop(self) -> float:
        """How much worse the compressed model is (negative: better), in the metric's units."""
        change = self.compressed - self.original
        return change if self.lower_is_better else -change

    @property
    def passed(self) -> bool:
        return self.max_drop is None or self.drop <= self.max_drop

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "original": self.original,
                "compressed": self.compressed, "drop": round(self.drop, 10) + 0.0,
                "lower_is_better": self.lower_is_better, "max_drop": self.max_drop,
                "passed": self.passed}


def check_command(command: str) -> None:
    """A usage error unless the command has the {weights} placeholder."""
    if PLACEHOLDER not in command:
        raise ConfigError(f"the --eval command must contain {PLACEHOLDER}, where the weights "
                          f"file's path goes (got {command!r})")


def run_metric(command: str, weights: Path, key: str | None, *, which: str) -> float:
    """Run `command` on `weights` and read its metric: the last number it prints on stdout,
    or the value of `key` in the last JSON line that has it.

    The command runs in its own process group, killed whole if we are interrupted.
    """
    check_command(command)
    quoted = shlex.quote(str(weights))
    for placeholder in (f"'{PLACEHOLDER}'", f'"{PLACEHOLDER}"', PLACEHOLDER):  # quoted or not
        command = command.replace(placeholder, quoted)
    proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, errors="replace",
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    tail = " | ".join(stderr.strip().splitlines()[-3:]) or "no stderr"
    if proc.returncode != 0:
        raise ModelpressError(f"--eval command failed on the {which} weights (exit "
                              f"{proc.returncode}): {tail}")
    value = _json_value(stdout, key) if key else _last_number(stdout)
    if value is None or not math.isfinite(value):
        wanted = f"JSON line with a numeric {key!r}" if key else "finite number"
        raise ModelpressError(f"--eval command printed no {wanted} on stdout for the {which} "
                              f"weights (stderr: {tail})")
    return value


def metric_of_mpz(command: str, mpz: Path, suffix: str, key: str | None) -> float:
    """Decompress `mpz` to a temporary file in the source's format, evaluate it, remove it."""
    from .api import decompress  # the gate sits on top of the API

    with tempfile.TemporaryDirectory(prefix="modelpress-eval-") as folder:
        copy = Path(folder) / f"weights{suffix}"
        decompress(mpz, copy)
        try:
            return run_metric(command, copy, key, which="compressed")
        except ModelpressError as e:
            e.message += f"; {mpz} was written"
            raise


def _last_number(text: str) -> float | None:
    numbers = NUMBER.findall(text)
    return float(numbers[-1]) if numbers else None


def _json_value(text: str, key: str) -> float | None:
    for line in reversed(text.splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        value = record.get(key) if isinstance(record, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None
