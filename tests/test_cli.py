"""The command line: exit codes, one-line errors, JSON report, atomic outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import model, write_npz

from modelpress_cli.cli import cli

REPORT_KEYS = {"name", "shape", "dtype", "method", "bits", "sparsity", "original_bytes",
               "compressed_bytes", "bits_per_weight", "rel_error", "sqnr_db", "max_abs_error"}
TOTAL_KEYS = {"tensors", "params", "original_bytes", "compressed_bytes", "ratio",
              "bits_per_weight", "rel_error", "sqnr_db", "seconds"}


def test_compress_prints_a_table_and_writes_the_json_report(runner, tiny_model, tmp_path):
    out, js = tmp_path / "m.mpz", tmp_path / "r.json"
    result = runner.invoke(cli, ["compress", str(tiny_model), str(out), "--bits", "4",
                                 "--report-json", str(js)])
    assert result.exit_code == 0, result.output
    assert "layer0.kernel" in result.stdout and "q4 g64 sym" in result.stdout
    assert "bits per weight" in result.stdout and result.stderr == ""
    report = json.loads(js.read_text())
    assert set(report) >= {"input", "output", "totals", "tensors"}
    assert set(report["totals"]) >= TOTAL_KEYS
    assert report["totals"]["compressed_bytes"] == out.stat().st_size
    assert report["totals"]["tensors"] == len(model()) == len(report["tensors"])
    rows = {r["name"].rsplit("/", 1)[-1]: r for r in report["tensors"]}
    assert all(set(r) >= REPORT_KEYS for r in rows.values())
    kernel = rows["layer0.kernel"]
    assert kernel["method"] == "q4 g64 sym" and kernel["bits"] == 4
    assert 3.5 < kernel["bits_per_weight"] <= 4.25 and 15 < kernel["sqnr_db"] < 25  # 4 + scales
    assert rows["layer0.bias"]["method"] == "lossless" and rows["layer0.bias"]["sqnr_db"] is None
    assert 0 < report["totals"]["rel_error"] < 0.2


def test_report_json_to_stdout_is_pure_json(runner, tiny_npz, tmp_path):
    result = runner.invoke(cli, ["compress", str(tiny_npz), str(tmp_path / "m.mpz"), "--bits",
                                 "8", "--prune", "0.5", "--report-json", "-"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    kernel = next(r for r in report["tensors"] if r["name"] == "layer0.kernel")
    assert kernel["method"] == "prune 50% + q8 g64 sym + sparse"
    assert kernel["sparsity"] >= 0.5


def test_quiet_prints_nothing(runner, tiny_npz, tmp_path):
    result = runner.invoke(cli, ["compress", str(tiny_npz), str(tmp_path / "m.mpz"), "-q"])
    assert result.exit_code == 0 and result.output == ""
    result = runner.invoke(cli, ["decompress", str(tmp_path / "m.mpz"),
                                 str(tmp_path / "o.npz"), "--quiet"])
    assert result.exit_code == 0 and result.output == ""


def test_inspect_shows_tensors_stages_and_source(runner, tiny_h5, tmp_path):
    runner.invoke(cli, ["compress", str(tiny_h5), str(tmp_path / "m.mpz"), "--bits", "3",
                        "--affine"])
    result = runner.invoke(cli, ["inspect", str(tmp_path / "m.mpz")])
    assert result.exit_code == 0
    assert "from tiny.h5 (h5" in result.stdout and "q3 g64 affine" in result.stdout
    facts = json.loads(runner.invoke(cli, ["inspect", str(tmp_path / "m.mpz"), "--json"]).stdout)
    assert facts["bytes"] == (tmp_path / "m.mpz").stat().st_size
    kernel = next(t for t in facts["tensors"] if t["name"].endswith("layer0.kernel"))
    assert kernel["stages"] == [{"id": "quantize.uniform", "bits": 3, "group_size": 64,
                                 "symmetric": False}]
    assert facts["source"]["format"] == "h5" and facts["metadata_keys"] == ["groups"]


def test_an_existing_output_is_kept_without_force(runner, tiny_npz, tmp_path):
    dst = tmp_path / "out.mpz"
    dst.write_bytes(b"keep me")
    result = runner.invoke(cli, ["compress", str(tiny_npz), str(dst)])
    assert result.exit_code == 1
    assert result.stderr == f"Error: {dst}: already exists (pass --force to overwrite)\n"
    assert dst.read_bytes() == b"keep me"
    assert runner.invoke(cli, ["compress", str(tiny_npz), str(dst), "--force"]).exit_code == 0
    assert dst.read_bytes()[:4] == b"\x89MPZ"


def test_truncated_input_fails_in_one_line_and_keeps_the_old_output(tmp_path, tiny_model,
                                                                     runner):
    src, dst = tmp_path / f"cut{tiny_model.suffix}", tmp_path / "out.mpz"
    src.write_bytes(tiny_model.read_bytes()[:-7])
    dst.write_bytes(b"keep me")
    result = runner.invoke(cli, ["compress", str(src), str(dst), "--force"])
    assert result.exit_code == 1 and result.stderr.startswith(f"Error: {src}: ")
    assert result.stderr.count("\n") == 1 and dst.read_bytes() == b"keep me"
    assert set(tmp_path.iterdir()) == {src, dst}  # no temp file left (tiny_model is elsewhere)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["compress", "{src}", "{tmp}/m.mpz", "--bits", "9"], 2, "--bits must be 2 to 8 or 16, got 9"),
    (["compress", "{src}", "{tmp}/m.mpz", "--bits", "1"], 2, "--bits"),
    (["compress", "{src}", "{tmp}/m.mpz", "--prune", "1"], 2, "--prune"),
    (["compress", "{src}", "{tmp}/m.mpz", "--group-size", "big"], 2,
     "Invalid value for '--group-size': 'big' is not a number"),
    (["compress", "{src}", "{tmp}/m.mpz", "--bits", "4", "--group-size", "0"], 2,
     "'--group-size': 0 is not a positive number"),
    (["compress", "{src}", "{tmp}/m.mpz", "--half", "bfloat16"], 2,
     "only applies with --bits 16"),
    (["compress", "{src}", "{tmp}/m.txt"], 2, "the compressed output must be named *.mpz"),
    (["compress", "{src}", "{src}", "--force"], 2, "must be named *.mpz"),
    (["compress", "{src}", "{tmp}/m.mpz", "--report-json", "{tmp}/m.mpz"], 2,
     "must differ from DST"),
    (["compress", "{src}", "{tmp}/m.mpz", "--report-json", "{tmp}/m.pt"], 1, "already exists"),
    (["compress", "{src}", "{tmp}/m.mpz", "--report-json", "{src}", "--force"], 1,
     "the output is the input"),
    (["compress", "{src}", "{tmp}/m.mpz", "--report-json", "{tmp}/no/r.json"], 1,
     "output folder does not exist"),
    (["compress", "{tmp}/missing.h5", "{tmp}/m.mpz"], 1, "missing.h5: no such file"),
    (["compress", "{tmp}/m.pt", "{tmp}/m.mpz"], 2, "unknown extension '.pt'"),
    (["compress", "{src}", "{tmp}/no/such/dir/m.mpz"], 1, "output folder does not exist"),
    (["decompress", "{src}", "{tmp}/o.npz"], 1, "not an .mpz file"),
    (["decompress", "{tmp}/m.mpz", "{tmp}/o.onnx"], 2, "unknown extension '.onnx'"),
])
def test_bad_usage_and_bad_input_get_one_clear_line(runner, tiny_npz, tmp_path, args, code,
                                                    message):
    (tmp_path / "m.pt").write_bytes(b"\x80\x02}q\x00.")  # a pickle: never opened
    if args[0] == "decompress":
        runner.invoke(cli, ["compress", str(tiny_npz), str(tmp_path / "m.mpz")])
    before = sorted(tmp_path.iterdir())
    argv = [a.format(src=tiny_npz, tmp=tmp_path) for a in args]
    result = runner.invoke(cli, argv)
    assert result.exit_code == code, result.output
    assert message in result.stderr and "Traceback" not in result.stderr
    if not result.stderr.startswith("Usage:"):  # our own errors: exactly one line
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert sorted(tmp_path.iterdir()) == before  # nothing written, nothing left behind


def test_python_m_and_console_script_run_the_same_command(tmp_path):
    src = write_npz(tmp_path / "m.npz", model())
    done = subprocess.run([sys.executable, "-m", "modelpress_cli", "compress", str(src),
                           str(tmp_path / "m.mpz"), "--bits", "8", "-q"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    done = subprocess.run([sys.executable, "-m", "modelpress_cli", "decompress",
                           str(tmp_path / "nope.mpz"), str(tmp_path / "o.npz")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().endswith("nope.mpz: cannot open: No such file or directory")


@pytest.mark.parametrize("command", ["compress", "decompress", "inspect"])
def test_every_command_has_help_with_exit_codes(runner, command):
    result = runner.invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "Exit status: 0 done, 1 failure" in result.stdout


def test_embeddings_and_heads_get_eight_bits_unless_told_otherwise(runner, tiny_npz, tmp_path):
    def methods(*flags):
        result = runner.invoke(cli, ["compress", str(tiny_npz), str(tmp_path / "m.mpz"),
                                     "--force", "--bits", "4", *flags, "--report-json", "-"])
        return {r["name"]: r["method"] for r in json.loads(result.stdout)["tensors"]}

    default = methods()
    assert default["embed.weight"] == "q8 g64 sym" and default["layer0.kernel"] == "q4 g64 sym"
    assert default["lm_head.weight"] == "tied to embed.weight"
    assert methods("--embed-bits", "4")["embed.weight"] == "q4 g64 sym"


def test_a_table_of_many_tensors_shows_the_largest_and_worst_and_counts_the_rest(runner,
                                                                                tmp_path):
    rng = np.random.default_rng(0)
    tensors = {f"t{i:02d}": rng.normal(0, 1 + i, (64, 64 + i)).astype(np.float32)
               for i in range(45)}
    src = write_npz(tmp_path / "many.npz", tensors)
    shown = runner.invoke(cli, ["compress", str(src), str(tmp_path / "m.mpz"), "--bits", "4"])
    rows = [n for n in tensors if f"│ {n} " in shown.stdout]
    assert len(rows) == 30 and "… 15 more tensors not shown (--all lists every one)" in \
        shown.stdout
    assert "t44" in rows  # the largest
    everything = runner.invoke(cli, ["compress", str(src), str(tmp_path / "m.mpz"), "--bits",
                                     "4", "--force", "--all"])
    assert all(f"│ {n} " in everything.stdout for n in tensors)


def _compress_with_stderr_on_a_terminal(src, dst, *options: str) -> bytes:
    """What `modelpress compress` writes to stderr when stderr is a pseudo-terminal."""
    pty = pytest.importorskip("pty", reason="pseudo-terminals are POSIX-only")
    import os
    import threading
    leader, follower = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # the terminal's buffer is small: read it while the command runs
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the command exited and closed its end
                return
            if not chunk:
                return
            chunks.append(chunk)

    # rich's own switches (which CI systems set) would turn the bar off or on regardless
    env = {k: v for k, v in os.environ.items()
           if k not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        done = subprocess.run([sys.executable, "-m", "modelpress_cli", "compress", str(src),
                               str(dst), "--bits", "4", *options], stdout=subprocess.PIPE,
                              stderr=follower, timeout=120,
                              env={**env, "TERM": "xterm-256color", "COLUMNS": "120"})
    finally:
        os.close(follower)
        reader.join(timeout=10)
        if not reader.is_alive():  # else something holds the terminal open: leave the fd be
            os.close(leader)
    assert done.returncode == 0, b"".join(chunks)
    return b"".join(chunks)


def test_a_progress_bar_is_drawn_on_a_terminal_and_nowhere_else(tmp_path):
    src = write_npz(tmp_path / "m.npz", model())
    drawn = _compress_with_stderr_on_a_terminal(src, tmp_path / "a.mpz").decode(errors="replace")
    assert "compressing" in drawn or any(name in drawn for name in model())
    assert "\x1b[" in drawn  # drawn and redrawn with terminal control codes
    assert _compress_with_stderr_on_a_terminal(src, tmp_path / "q.mpz", "--quiet") == b""
    piped = subprocess.run([sys.executable, "-m", "modelpress_cli", "compress", str(src),
                            str(tmp_path / "b.mpz"), "--bits", "4"], capture_output=True,
                           text=True, timeout=120)
    assert piped.returncode == 0 and piped.stderr == ""  # CI logs stay clean
    assert "bits per weight" in piped.stdout  # the table still goes to stdout


def test_a_closed_stderr_is_no_error(tmp_path):
    """`2>&-` leaves Python without sys.stderr: no bar to draw, and no reason to fail."""
    src = write_npz(tmp_path / "m.npz", model())
    done = subprocess.run(["sh", "-c", '"$0" -m modelpress_cli compress "$1" "$2" --bits 4 2>&-',
                           sys.executable, str(src), str(tmp_path / "m.mpz")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "bits per weight" in done.stdout
    assert (tmp_path / "m.mpz").stat().st_size > 0


def test_progress_is_reported_per_tensor_through_the_api(tmp_path):
    import modelpress_cli as mp
    src = write_npz(tmp_path / "m.npz", model())
    calls = []
    mp.compress(src, tmp_path / "m.mpz", bits=4, progress=lambda *a: calls.append(a))
    assert [name for name, _, _ in calls] == list(model())
    done = [d for _, d, _ in calls]
    assert done == sorted(done) and done[-1] == calls[-1][2] == sum(
        v.nbytes for v in model().values())
