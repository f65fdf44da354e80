"""What a compress run gained and lost: rows per tensor, totals, JSON and a rich table."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

from .evaluate import TaskMetric
from .pipeline import ErrorStats

DEFAULT_ROWS = 30  # the largest and the worst tensors; --all shows every one


@dataclass(frozen=True)
class TensorRow:
    """One tensor's outcome; errors measured by decoding the stored bytes back."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    method: str
    bits: int | None  # code width, or the dtype's when stored as is; None: entropy-coded steps
    sparsity: float
    original_bytes: int
    compressed_bytes: int
    params: int
    errors: ErrorStats
    note: str | None = None
    non_finite: int = 0  # NaN and ±Inf entries, always kept exactly
    rule: str | None = None  # the recipe rule that chose this tensor's options

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.compressed_bytes / self.params if self.params else 0.0

    @property
    def gap_bits(self) -> float | None:
        """Bits per weight above the Gaussian rate-distortion bound at this SQNR, None when
        exact: bits/weight − SQNR / 6.02 (docs/quality.md says what it means)."""
        if not self.compressed_bytes:  # tied to another tensor: its bytes are counted there
            return None
        return gap_bits(self.bits_per_weight, self.errors.sqnr_db)

    def to_json(self) -> dict[str, Any]:
        gap = self.gap_bits
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "method": self.method, "bits": self.bits, "sparsity": round(self.sparsity, 6),
                "original_bytes": self.original_bytes, "compressed_bytes": self.compressed_bytes,
                "bits_per_weight": round(self.bits_per_weight, 4),
                "rel_error": _num(self.errors.rel_error), "sqnr_db": _num(self.errors.sqnr_db),
                "max_abs_error": _num(self.errors.max_abs),
                "gap_db": _num(None if gap is None else gap * DB_PER_BIT),
                "gap_bits": _num(gap), "non_finite": self.non_finite,
                "note": self.note, "rule": self.rule}


DB_PER_BIT = 20 * math.log10(2)  # 6.02 dB: what each bit per weight buys an ideal coder


def gap_bits(bits_per_weight: float, sqnr_db: float | None) -> float | None:
    """How many bits per weight a coder spends beyond the Gaussian bound for its SQNR."""
    if sqnr_db is None or math.isinf(sqnr_db):
        return None
    return bits_per_weight - sqnr_db / DB_PER_BIT


@dataclass
class Report:
    """A compress run: per-tensor rows, file sizes, time and warnings."""

    input: str
    output: str
    input_bytes: int
    output_bytes: int
    seconds: float
    rows: list[TensorRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    task_metric: TaskMetric | None = None  # set by the --eval gate

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def errors(self) -> ErrorStats:
        total = ErrorStats(0.0, 0.0, 0.0)
        for row in self.rows:
            total = total + row.errors
        return total

    @property
    def ratio(self) -> float:
        return self.input_bytes / self.output_bytes if self.output_bytes else 0.0

    @property
    def bits_per_weight(self) -> float:
        """Every byte of the .mpz file counted: headers, index, scales, masks."""
        return 8 * self.output_bytes / self.params if self.params else 0.0

    @property
    def lossy_gap_bits(self) -> float | None:
        """The gap over the tensors that were quantized or pruned, their bytes and errors."""
        lossy = [r for r in self.rows if r.errors.sqnr_db is not None]
        params = sum(r.params for r in lossy)
        if not params:
            return None
        total = sum((r.errors for r in lossy), ErrorStats(0.0, 0.0, 0.0))
        return gap_bits(8 * sum(r.compressed_bytes for r in lossy) / params, total.sqnr_db)

    def to_json(self) -> dict[str, Any]:
        errors = self.errors
        gap = self.lossy_gap_bits
        return {"input": self.input, "output": self.output,
                "totals": {"tensors": len(self.rows), "params": self.params,
                           "original_bytes": self.input_bytes,
                           "compressed_bytes": self.output_bytes,
                           "ratio": round(self.ratio, 4),
                           "bits_per_weight": round(self.bits_per_weight, 4),
                           "rel_error": _num(errors.rel_error), "sqnr_db": _num(errors.sqnr_db),
                           "max_abs_error": _num(errors.max_abs),
                           "lossy_gap_bits": _num(gap),
                           "non_finite": sum(r.non_finite for r in self.rows),
                           "seconds": round(self.seconds, 3)},
                "tensors": [r.to_json() for r in self.rows], "warnings": self.warnings,
                "task_metric": self.task_metric.to_json() if self.task_metric else None}

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2, allow_nan=False)

    def render_table(self, console: Console, *, all_rows: bool = False) -> None:
        """Print the table; without `all_rows`, only the largest and worst tensors."""
        from rich.table import Table  # rich is 70 ms of an API caller's start-up otherwise
        shown = self.rows if all_rows else _largest_and_worst(self.rows, DEFAULT_ROWS)
        table = Table(title=f"{cell(self.input)} → {cell(self.output)}", title_justify="left",
                      show_footer=True)
        errors = self.errors
        footer = [f"total ({len(self.rows)} tensors)", "", "", human_bytes(self.input_bytes),
                  human_bytes(self.output_bytes), f"{self.bits_per_weight:.2f}", "",
                  _sci(errors.rel_error), _db(errors.sqnr_db), _gap(self.lossy_gap_bits),
                  _sci(errors.max_abs)]
        headers = ["tensor", "shape", "method", "original", "stored", "bits/w", "zeros",
                   "rel err", "SQNR dB", "gap", "max err"]
        longest = max((len(cell(r.name)) for r in shown), default=0)
        for header, foot in zip(headers, footer, strict=True):
            numeric = header not in ("tensor", "shape", "method")
            table.add_column(header, foot, justify="right" if numeric else "left",
                             overflow="fold", no_wrap=numeric,  # names fold last
                             min_width=min(longest, 48) if header == "tensor" else None)
        for row in shown:
            method = row.method + (f" ({row.note})" if row.note else "") + (
                f" [{row.rule}]" if row.rule else "")
            table.add_row(cell(row.name), "×".join(map(str, row.shape)) or "scalar", cell(method),
                          human_bytes(row.original_bytes), human_bytes(row.compressed_bytes),
                          f"{row.bits_per_weight:.2f}", f"{row.sparsity:.1%}",
                          _sci(row.errors.rel_error), _db(row.errors.sqnr_db),
                          _gap(row.gap_bits), _sci(row.errors.max_abs))
        console.print(table)
        if len(shown) < len(self.rows):
            console.print(f"… {len(self.rows) - len(shown)} more tensors not shown "
                          "(--all lists every one)")
        console.print(f"ratio {self.ratio:.2f}× · {self.bits_per_weight:.3f} bits per weight "
                      f"(everything counted) · {self.seconds:.2f} s")
        if self.task_metric:
            m = self.task_metric
            verdict = "" if m.max_drop is None else (
                f" · max drop {m.max_drop:g}: " + ("ok" if m.passed else "[bold red]FAILED[/]"))
            console.print(f"task metric {m.original:.6g} → {m.compressed:.6g} (drop "
                          f"{m.drop:.4g}{', lower is better' if m.lower_is_better else ''})"
                          f"{verdict}")


def _largest_and_worst(rows: list[TensorRow], limit: int) -> list[TensorRow]:
    """Up to `limit` rows, two thirds the largest and one third the worst, in file order."""
    if len(rows) <= limit:
        return rows
    largest = sorted(rows, key=lambda r: -r.original_bytes)[: limit * 2 // 3]
    worst = sorted(rows, key=lambda r: -r.errors.rel_error)
    picked = {id(r) for r in largest}
    for row in worst:
        if len(picked) >= limit:
            break
        picked.add(id(row))
    return [r for r in rows if id(r) in picked]


def render_index(facts: dict[str, Any], console: Console) -> None:
    """The `inspect` view of an .mpz: file facts, then a row per tensor."""
    from rich.table import Table
    source, tool = facts["source"], facts["tool"] or {}
    console.print(f"{facts['file']}: .mpz version {facts['format_version']}, written by "
                  f"{tool.get('name')} {tool.get('version')} from {source.get('file')} "
                  f"({source.get('format')}, {human_bytes(source.get('bytes', 0))})",
                  markup=False)
    console.print(f"{len(facts['tensors'])} tensors, {facts['params']} weights, "
                  f"{human_bytes(facts['bytes'])}, {facts['bits_per_weight']:.3f} bits per "
                  f"weight; source metadata: {', '.join(facts['metadata_keys']) or 'none'}",
                  markup=False)
    table = Table()
    for header in ("tensor", "shape", "dtype", "method", "stored", "bits/w"):
        table.add_column(header, justify="right" if header in ("stored", "bits/w") else "left",
                         overflow="fold")
    for t in facts["tensors"]:
        method = t["method"] + (f" [{t['rule']}]" if t.get("rule") else "")
        table.add_row(cell(t["name"]), "×".join(map(str, t["shape"])) or "scalar", t["dtype"],
                      cell(method), human_bytes(t["stored_bytes"]),
                      f"{t['bits_per_weight']:.2f}")
    console.print(table)


def cell(text: str) -> str:
    """Text from a file, safe in a rich table: no markup, no control characters."""
    from rich.markup import escape
    return escape(text if text.isprintable() else repr(text)[1:-1])


def _num(value: float | None) -> float | None:
    """JSON-safe: None stands for an infinite SQNR (no error at all)."""
    if value is None or math.isinf(value) or math.isnan(value):
        return None
    return round(value, 6 if abs(value) >= 1e-3 else 12)


def human_bytes(n: float) -> str:
    """1234567 → '1.2 MB'."""
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}"
    return f"{n:.1f} GB"


def _sci(value: float) -> str:
    return "0" if value == 0 else f"{value:.2e}"


def _gap(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def _db(value: float | None) -> str:
    return "exact" if value is None else f"{value:.1f}"
