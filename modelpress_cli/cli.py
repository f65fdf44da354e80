"""The `modelpress` command: a few lines per command over the Python API."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from . import __version__, api
from .errors import ModelpressError
from .pipeline import DEFAULT_GROUP_SIZE, DEFAULT_MIN_ELEMENTS
from .report import _bytes

EXIT_CODES = """\b
Exit status: 0 done, 1 failure (bad input, I/O, damaged file), 2 usage error."""


def _group_size(value: str) -> int | str:
    if value in ("channel", "tensor"):
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number, 'channel' or 'tensor'") from None


def _stdout() -> Console:
    """Terminal width on a terminal; 160 columns in pipes and CI logs, where rich assumes 80."""
    return Console(width=None if sys.stdout.isatty() else 160)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _warn(messages: list[str], quiet: bool) -> None:
    for message in messages:
        if not quiet:
            _stderr().print(f"warning: {message}", markup=False)


class _Failure(click.ClickException):
    """A ModelpressError or OSError shown the click way: 'Error: ...' on stderr, its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Group(click.Group):
    """Turns the errors we expect (bad input, I/O) into one line and an exit status."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ModelpressError as e:
            raise _Failure(str(e), e.exit_code) from None
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            raise _Failure(f"{where}{e.strerror or e}", 1) from None


@click.group(cls=_Group, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="modelpress")
def cli() -> None:
    """Shrink saved neural-network weights (.npz, .h5, .safetensors) into one .mpz file."""


@cli.command(epilog=EXIT_CODES)
@click.argument("src", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("dst", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--bits", type=click.IntRange(2, 16), default=None,
              help="2-8: integer codes with float16 scales; 16: cast to float16. "
                   "Omit for lossless compression only.")
@click.option("--group-size", default=str(DEFAULT_GROUP_SIZE), show_default=True,
              metavar="G|channel|tensor",
              help="Values sharing one scale, along the last axis; or one per channel "
                   "(axis 0), or one per tensor.")
@click.option("--symmetric/--affine", default=True, show_default=True,
              help="Affine adds a zero point per group: better for skewed groups.")
@click.option("--prune", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              metavar="F", help="Zero this fraction of the smallest weights of each tensor.")
@click.option("--bf16", is_flag=True, help="With --bits 16, cast to bfloat16 instead.")
@click.option("--min-elements", type=click.IntRange(0), default=DEFAULT_MIN_ELEMENTS,
              show_default=True, help="Smaller tensors stay lossless.")
@click.option("--quantize-1d", is_flag=True,
              help="Also quantize 1-D tensors (biases, norms); they stay lossless by default.")
@click.option("--report-json", type=click.Path(path_type=Path, dir_okay=False,
                                               allow_dash=True), metavar="PATH|-",
              help="Write the report as JSON to PATH, or to stdout with '-'.")
@click.option("--all", "all_rows", is_flag=True, help="List every tensor in the table.")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def compress(src: Path, dst: Path, bits: int | None, group_size: str, symmetric: bool,
             prune: float, bf16: bool, min_elements: int, quantize_1d: bool,
             report_json: Path | None, all_rows: bool, force: bool, quiet: bool) -> None:
    """Compress SRC (.npz, .h5, .safetensors) into DST (.mpz) and report size and error."""
    if bits is not None and 8 < bits < 16:
        raise click.BadParameter("must be 2 to 8, or 16", param_hint="--bits")
    if bf16 and bits != 16:
        raise click.BadParameter("only applies with --bits 16", param_hint="--bf16")
    report = api.compress(src, dst, force=force, bits=bits, group_size=_group_size(group_size),
                          symmetric=symmetric, prune=prune,
                          half="bfloat16" if bf16 else "float16", min_elements=min_elements,
                          quantize_1d=quantize_1d)
    _warn(report.warnings, quiet)
    if report_json is not None:
        if str(report_json) == "-":
            click.echo(report.to_json_text())
        else:
            report_json.write_text(report.to_json_text() + "\n")
    if not quiet and str(report_json) != "-":
        report.render_table(_stdout(), all_rows=all_rows)


@cli.command(epilog=EXIT_CODES)
@click.argument("src", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("dst", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def decompress(src: Path, dst: Path, force: bool, quiet: bool) -> None:
    """Rebuild a weights file from SRC (.mpz); DST's extension picks the format."""
    result = api.decompress(src, dst, force=force)
    _warn(result.warnings, quiet)
    if not quiet:
        click.echo(f"wrote {result.output} ({result.format}, {result.tensors} tensors, "
                   f"{_bytes(result.bytes_written)}) in {result.seconds:.2f} s")


@cli.command(epilog=EXIT_CODES)
@click.argument("src", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the index as JSON.")
def inspect(src: Path, as_json: bool) -> None:
    """Show what SRC (.mpz) holds: every tensor, its stages and its stored size."""
    facts = api.inspect(src)
    if as_json:
        import json
        click.echo(json.dumps(facts, indent=2))
        return
    console = _stdout()
    source = facts["source"]
    tool = facts["tool"] or {}
    console.print(f"{facts['file']}: .mpz version {facts['format_version']}, written by "
                  f"{tool.get('name')} {tool.get('version')} from {source.get('file')} "
                  f"({source.get('format')}, {_bytes(source.get('bytes', 0))})", markup=False)
    console.print(f"{len(facts['tensors'])} tensors, {facts['params']} weights, "
                  f"{_bytes(facts['bytes'])}, {facts['bits_per_weight']:.3f} bits per weight; "
                  f"source metadata: {', '.join(facts['metadata_keys']) or 'none'}",
                  markup=False)
    table = Table()
    for header in ("tensor", "shape", "dtype", "method", "stored", "bits/w"):
        table.add_column(header, justify="right" if header in ("stored", "bits/w") else "left",
                         overflow="fold")
    for t in facts["tensors"]:
        table.add_row(t["name"], "×".join(map(str, t["shape"])) or "scalar", t["dtype"],
                      t["method"], _bytes(t["stored_bytes"]), f"{t['bits_per_weight']:.2f}")
    console.print(table)


@cli.command(epilog=EXIT_CODES)
@click.argument("src", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; the exit status says it all.")
def verify(src: Path, quiet: bool) -> None:
    """Check SRC (.mpz) whole: index, every block's checksum, every tensor's decode."""
    result = api.verify(src)
    if not quiet:
        click.echo(f"ok: {result.file}: {result.tensors} tensors, {result.blocks} blocks "
                   f"checked ({_bytes(result.bytes)}) in {result.seconds:.2f} s")


def _terminate(signum: int, frame) -> None:
    """SIGTERM unwinds like Ctrl-C, so temporary outputs are removed on the way out."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """Entry point: expected failures are one line (see _Group); a bug is one line too."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(args=argv, prog_name="modelpress")
    except Exception as e:  # a bug: one line, not a traceback
        click.echo(f"Error: internal error ({type(e).__name__}: {e}); please report it",
                   err=True)
        sys.exit(1)
