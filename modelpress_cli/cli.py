"""The `modelpress` command: a few lines per command over the Python API."""

from __future__ import annotations

import contextlib
import gc
import json
import signal
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from . import __version__, api
from .atomic import atomic_output, check_output
from .errors import MetricDropError, ModelpressError
from .pipeline import DEFAULT_GROUP_SIZE, DEFAULT_MIN_ELEMENTS
from .report import Report, cell, human_bytes, render_index

EXIT_CODES = """\b
Exit status: 0 done, 1 failure (bad input, I/O, damaged file), 2 usage error,
3 task metric dropped more than --max-drop (the .mpz is still written)."""


class GroupSize(click.ParamType):
    """A positive group length, or 'channel' / 'tensor'."""

    name = "G|channel|tensor"

    def convert(self, value, param, ctx):
        if value in ("channel", "tensor") or isinstance(value, int):
            return value
        try:
            size = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a number, 'channel' or 'tensor'", param, ctx)
        if size < 1:
            self.fail(f"{size} is not a positive number of values", param, ctx)
        return size


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


def _stdout():
    """A rich Console for tables: terminal width on a terminal; 160 columns in pipes and CI
    logs, where rich assumes 80. (rich is imported here and in _progress_bar only: a --quiet
    or --json run does without its 70 ms of imports.)"""
    from rich.console import Console
    return Console(width=None if sys.stdout.isatty() else 160)


def _warn(messages: list[str], quiet: bool) -> None:
    if not quiet:
        for message in messages:
            click.echo(f"warning: {message}", err=True)


@click.group(cls=_Group, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="modelpress")
def cli() -> None:
    """Shrink saved neural-network weights (.npz, .h5, .safetensors) into one .mpz file."""


@cli.command(epilog=EXIT_CODES)
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--bits", type=click.IntRange(2, 16), default=None,  # 9-15: Options says why
              help="2-8: integer codes with float16 scales; 16: cast to float16 (or --half). "
                   "Omit for lossless compression only.")
@click.option("--group-size", type=GroupSize(), default=DEFAULT_GROUP_SIZE, show_default=True,
              help="Values sharing one scale, along the last axis; or one per channel "
                   "(axis 0), or one per tensor.")
@click.option("--symmetric/--affine", default=True, show_default=True,
              help="Affine adds a zero point per group: better for skewed groups.")
@click.option("--method", type=click.Choice(["uniform", "kmeans", "nf", "auto"]),
              default="uniform", show_default=True,
              help="With --bits 2-8: uniform levels with searched scales per group; kmeans, "
                   "one fitted codebook per tensor; nf, normal-float levels (NF4) times a "
                   "scale per group; auto, per tensor the least error of the three at no "
                   "more than 1% above uniform's size.")
@click.option("--scale-bits", type=click.IntRange(3, 8), default=None,
              help="Double-quantize uniform scales to this many bits, with a float16 unit "
                   "per 16 groups (K-quants style): e.g. --group-size 16 --scale-bits 7.")
@click.option("--target-bpw", type=click.FloatRange(0.1, 32), default=None, metavar="X",
              help="Instead of --bits: the smallest error for X bits per weight on average, "
                   "whole file counted (one step per tensor, entropy-coded codes).")
@click.option("--min-sqnr", type=click.FloatRange(0, 150), default=None, metavar="DB",
              help="Instead of --bits: the smallest file with every tensor's SQNR >= DB.")
@click.option("--max-rel-error", type=click.FloatRange(1e-7, 1), default=None, metavar="E",
              help="Instead of --bits: the smallest file with every tensor's relative "
                   "error <= E.")
@click.option("--prune", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              metavar="F", help="Zero this fraction of the smallest weights of each tensor.")
@click.option("--nm", metavar="N:M", default=None,
              help="Structured sparsity: keep N of every M values along the last axis (2:4 is "
                   "what sparse tensor cores run).")
@click.option("--half", type=click.Choice(["float16", "bfloat16"]), default=None,
              help="With --bits 16: the 16-bit type (default float16).")
@click.option("--embed-bits", type=click.IntRange(2, 8), default=8, show_default=True,
              help="Least bits for embeddings and output heads (tok_emb, embed_tokens, wte, "
                   "lm_head...), the tensors models are most sensitive to.")
@click.option("--min-elements", type=click.IntRange(0), default=DEFAULT_MIN_ELEMENTS,
              show_default=True, help="Smaller tensors stay lossless.")
@click.option("--quantize-1d", is_flag=True,
              help="Also quantize 1-D tensors (biases, norms); they stay lossless by default.")
@click.option("--config", "recipe", type=click.Path(path_type=Path, dir_okay=False),
              metavar="RECIPE.toml",
              help="Per-tensor options: [defaults] and [[rules]] matched on tensor names "
                   "(docs/recipes/). Flags given here override its defaults, never its rules.")
@click.option("--eval", "eval_command", metavar="'CMD {weights}'",
              help="Run CMD on SRC and on the round trip (a temporary copy in SRC's format) "
                   "and report the model's metric: the last number CMD prints.")
@click.option("--eval-key", metavar="KEY", help="Read the metric from KEY of a JSON line.")
@click.option("--max-drop", type=float, metavar="D",
              help="Exit with status 3 if the metric drops by more than D (DST is kept).")
@click.option("--lower-is-better", is_flag=True, help="The metric is a loss or perplexity.")
@click.option("--report-json", type=click.Path(path_type=Path, dir_okay=False,
                                               allow_dash=True), metavar="PATH|-",
              help="Write the report as JSON to PATH, or to stdout with '-'.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Threads to encode on, big tensors split across them [default: every "
                   "core]; the output and the report are the same for any count.")
@click.option("--all", "all_rows", is_flag=True, help="List every tensor in the table.")
@click.option("--force", is_flag=True, help="Overwrite DST (and the JSON report) if they exist.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def compress(src: Path, dst: Path, recipe: Path | None, eval_command: str | None,
             eval_key: str | None, max_drop: float | None, lower_is_better: bool,
             report_json: Path | None, threads: int | None, all_rows: bool, force: bool,
             quiet: bool, **options) -> None:
    """Compress SRC (.npz, .h5, .safetensors, or a sharded checkpoint's folder or index) into
    DST (.mpz) and report size and error."""
    if options["half"] is not None and options["bits"] != 16 and recipe is None:
        raise click.BadParameter("only applies with --bits 16", param_hint="--half")
    ctx = click.get_current_context()
    given = {name: value for name, value in options.items()  # so a recipe's defaults apply
             if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
    to_file = report_json is not None and str(report_json) != "-"
    if to_file:  # refuse a bad report path before the work, not after it
        if report_json.resolve() == dst.resolve():
            raise click.BadParameter("must differ from DST", param_hint="--report-json")
        check_output(report_json, force=force, inputs=(src,))
    try:
        with _progress_bar(enabled=not quiet) as progress:
            report = api.compress(src, dst, force=force, recipe=recipe,
                                  eval_command=eval_command, eval_key=eval_key,
                                  lower_is_better=lower_is_better, max_drop=max_drop,
                                  progress=progress, threads=threads, **given)
    except MetricDropError as e:  # show what was measured, then exit 3
        _show(e.report, report_json, all_rows, force, quiet)
        raise
    _show(report, report_json, all_rows, force, quiet)


@contextlib.contextmanager
def _progress_bar(*, enabled: bool):
    """A rich progress bar on stderr when it is a terminal; None in pipes and CI logs."""
    if not (enabled and sys.stderr is not None and sys.stderr.isatty()):  # None: 2>&-
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("compressing", total=None)

        def update(name: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=cell(name)[:40])

        yield update


def _show(report: Report, report_json: Path | None, all_rows: bool, force: bool,
          quiet: bool) -> None:
    """Warnings to stderr; the JSON report to its file or stdout; the table to stdout."""
    _warn(report.warnings, quiet)
    if report_json is not None and str(report_json) != "-":
        with atomic_output(report_json, force=force, inputs=(Path(report.input),)) as tmp:
            tmp.write_text(report.to_json_text() + "\n")
    elif report_json is not None:
        click.echo(report.to_json_text())
    if not quiet and str(report_json) != "-":
        report.render_table(_stdout(), all_rows=all_rows)


class Size(click.ParamType):
    """A size in bytes: 2GB, 500MB, 1.5GiB or a plain number of bytes."""

    name = "SIZE"
    UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().replace(" ", "")
        number = text.rstrip("KMGTIB")
        try:
            size = int(float(number) * self.UNITS[text[len(number):]])
        except (ValueError, KeyError):
            self.fail(f"{value!r} is not a size like 2GB, 500MB or 1.5GiB", param, ctx)
        if size < 1:
            self.fail(f"{value!r} is not a positive size", param, ctx)
        return size


@cli.command(epilog=EXIT_CODES)
@click.argument("src", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--shard-size", type=Size(), default=None,
              help="Write a sharded .safetensors checkpoint into the folder DST: shards of at "
                   "most SIZE (e.g. 2GB) and model.safetensors.index.json.")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def decompress(src: Path, dst: Path, shard_size: int | None, force: bool, quiet: bool) -> None:
    """Rebuild a weights file from SRC (.mpz); DST's extension picks the format, or DST is a
    folder for a sharded checkpoint (--shard-size)."""
    result = api.decompress(src, dst, force=force, shard_bytes=shard_size)
    _warn(result.warnings, quiet)
    if not quiet:
        click.echo(f"wrote {result.output} ({result.format}, {result.tensors} tensors, "
                   f"{human_bytes(result.bytes_written)}) in {result.seconds:.2f} s")


@cli.command(epilog=EXIT_CODES)
@click.argument("src", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the index as JSON.")
def inspect(src: Path, as_json: bool) -> None:
    """Show what SRC (.mpz) holds: every tensor, its stages and its stored size."""
    facts = api.inspect(src)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        render_index(facts, _stdout())


@cli.command(epilog=EXIT_CODES)
@click.argument("src", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; the exit status says it all.")
def verify(src: Path, quiet: bool) -> None:
    """Check SRC (.mpz) whole: index, every block's checksum, every tensor's decode."""
    result = api.verify(src)
    if not quiet:
        click.echo(f"ok: {result.file}: {result.tensors} tensors, {result.blocks} blocks "
                   f"checked ({human_bytes(result.bytes)}) in {result.seconds:.2f} s")


def _terminate(signum: int, frame) -> None:
    """SIGTERM unwinds like Ctrl-C, so temporary outputs are removed on the way out."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """The command, callable in-process: expected failures are one line (see _Group); a bug
    is one line too."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(args=argv, prog_name="modelpress")
    except Exception as e:  # a bug: one line, not a traceback
        click.echo(f"Error: internal error ({type(e).__name__}: {e}); please report it",
                   err=True)
        sys.exit(1)


def run() -> None:
    """The `modelpress` executable (and `python -m modelpress_cli`): main() in a process of
    its own, which ends with it, so it takes two process-wide shortcuts that main() alone,
    called from someone's long-lived process, must not."""
    # numba's modules, and the typing tables it builds when it loads the first kernel, are
    # a million-odd objects that live until exit. Frozen, the garbage collector skips them:
    # in the collections a compress triggers and, above all, in those at interpreter exit
    # (0.4-0.5 s of every run, whatever the model's size, before).
    gc.freeze()
    # Where scipy is installed, numba's first kernel load imports scipy.linalg (0.3 s) to find
    # a BLAS for np.dot and the like, which no kernel here uses. The command blocks that one
    # import, as a machine without scipy has it fail (CI runs without scipy).
    sys.modules.setdefault("scipy.linalg.cython_blas", None)
    try:
        main()
    finally:
        gc.freeze()
