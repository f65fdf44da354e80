"""The accuracy table of docs/accuracy.md: every sample model under every setting.

Run by hand: ``python benchmarks/accuracy.py > table.md``. Each row runs the task-metric gate
(`--eval`) exactly as the printed command does, so every number can be reproduced by pasting
that command.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import modelpress_cli as mp  # noqa: E402

MODELS = [  # (weights, evaluation script, lower is better, best recipe)
    ("sample_models/digits_mlp.h5", "sample_models/eval_digits.py", False,
     "docs/recipes/digits-mlp.toml"),
    ("sample_models/digits_cnn.h5", "sample_models/eval_digits_cnn.py", False,
     "docs/recipes/digits-cnn.toml"),
    ("sample_models/charlm.safetensors", "sample_models/eval_charlm.py", True,
     "docs/recipes/charlm.toml"),
]
SETTINGS = [("lossless", []), ("8-bit", ["--bits", "8"]), ("4-bit", ["--bits", "4"]),
            ("4-bit, 50% pruned", ["--bits", "4", "--prune", "0.5"]), ("3-bit", ["--bits", "3"]),
            ("2:4 sparse, 8-bit", ["--bits", "8", "--nm", "2:4"]),
            ("4-bit, method auto", ["--bits", "4", "--method", "auto"]),
            ("4-bit, g16 + 7-bit scales", ["--bits", "4", "--group-size", "16",
                                           "--scale-bits", "7"]),
            ("target 4.5 bpw (all tensors)", ["--target-bpw", "4.5", "--min-elements", "0"]),
            ("min SQNR 25 dB", ["--min-sqnr", "25.0"])]


def options(args: list[str]) -> dict:
    """The API keywords for a list of CLI flags (the few this table uses)."""
    out = {}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        key = flag[2:].replace("-", "_")
        out[key] = value if key in ("nm", "recipe", "method") else float(value) if "." in value \
            else int(value)
    return out


def main() -> None:
    for weights, script, lower, best in MODELS:
        if not (ROOT / weights).exists():
            continue
        command = f"python {script} {{weights}}"
        print(f"\n### {Path(weights).stem}\n")
        print("| setting | ratio | bits/weight | metric before | after | change | command |")
        print("|---|---|---|---|---|---|---|")
        rows = SETTINGS + ([("best recipe", ["--config", best])] if (ROOT / best).exists()
                           else [])
        for label, args in rows:
            with tempfile.TemporaryDirectory() as tmp:
                kwargs = options([a if a != "--config" else "--recipe" for a in args])
                report = mp.compress(ROOT / weights, Path(tmp, "m.mpz"),
                                     eval_command=f"{sys.executable} {ROOT / script} {{weights}}",
                                     lower_is_better=lower, **kwargs)
            m = report.task_metric
            change = m.compressed - m.original
            flags = " ".join(args + (["--lower-is-better"] if lower else []))
            print(f"| {label} | {report.ratio:.2f} | {report.bits_per_weight:.2f} | "
                  f"{m.original:.4g} | {m.compressed:.4g} | {change:+.3f} | "
                  f"`modelpress compress {weights} m.mpz {flags} --eval '{command}'` |".replace(
                      "  ", " "))


if __name__ == "__main__":
    main()
