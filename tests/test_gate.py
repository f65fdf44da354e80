"""The task-metric gate: passes, fails with exit 3, reports both values, cleans up."""

from __future__ import annotations

import json
import sys
import tempfile

import pytest
from conftest import SAMPLES

from modelpress_cli.cli import cli

MLP = SAMPLES / "digits_mlp.h5"
EVAL = f"{sys.executable} {SAMPLES / 'eval_digits.py'} {{weights}}"


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Point tempfile at a folder of our own, to prove the gate leaves nothing there."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_the_gate_passes_and_reports_both_values(runner, tmp_path, private_tmp):
    result = runner.invoke(cli, ["compress", str(MLP), str(tmp_path / "m.mpz"), "--bits", "8",
                                 "--eval", EVAL, "--max-drop", "0.5", "--report-json", "-"])
    assert result.exit_code == 0, result.stderr
    metric = json.loads(result.stdout)["task_metric"]
    assert metric["original"] == 97.56 and abs(metric["drop"]) <= 0.5 and metric["passed"]
    assert metric["drop"] == pytest.approx(metric["original"] - metric["compressed"])
    assert list(private_tmp.iterdir()) == []


def test_a_recipe_that_destroys_the_model_exits_3_and_keeps_the_mpz(runner, tmp_path,
                                                                    private_tmp):
    recipe = tmp_path / "destroy.toml"
    recipe.write_text('[defaults]\nbits = 2\ngroup_size = "tensor"\nprune = 0.9\n\n'
                      '[[rules]]\nmatch = "*"\nbits = 2\ngroup_size = "tensor"\nprune = 0.9\n')
    dst = tmp_path / "m.mpz"
    result = runner.invoke(cli, ["compress", str(MLP), str(dst), "--config", str(recipe),
                                 "--eval", EVAL, "--max-drop", "0.5"])
    assert result.exit_code == 3
    assert "task metric 97.56 → " in result.stdout and "FAILED" in result.stdout
    assert result.stderr.startswith(f"Error: {dst}: task metric dropped by ")
    assert "(97.56 → " in result.stderr and "still written" in result.stderr
    assert dst.exists() and list(private_tmp.iterdir()) == []
    assert runner.invoke(cli, ["verify", str(dst)]).exit_code == 0


def test_lower_is_better_and_a_json_key(runner, tmp_path, private_tmp):
    script = tmp_path / "loss.py"
    src = tmp_path / "m.npz"
    script.write_text("import json, sys, numpy as np\n"  # the loss: distance to the original
                      f"w0 = np.load({str(src)!r})['w']\n"
                      "w = np.load(sys.argv[1])['w']\n"
                      "print('noise 123')\n"
                      "print(json.dumps({'loss': float(np.abs(w - w0).mean()), 'n': 7}))\n")
    import numpy as np
    np.savez(src, w=np.random.default_rng(0).normal(1, 0.1, (64, 64)).astype(np.float32))
    result = runner.invoke(cli, ["compress", str(src), str(tmp_path / "m.mpz"), "--bits", "2",
                                 "--eval", f"{sys.executable} {script} {{weights}}",
                                 "--eval-key", "loss", "--lower-is-better", "--max-drop", "1e-6",
                                 "--report-json", str(tmp_path / "r.json")])
    assert result.exit_code == 3
    metric = json.loads((tmp_path / "r.json").read_text())["task_metric"]
    assert metric["lower_is_better"] and metric["compressed"] > metric["original"]
    assert metric["drop"] == pytest.approx(metric["compressed"] - metric["original"])


@pytest.mark.parametrize(("command", "message"), [
    (f"{sys.executable} -c 'import sys; sys.exit(\"no such model\")' {{weights}}",
     "--eval command failed on the original weights (exit 1): no such model"),
    ("echo no digits here {weights} | tr -d 0-9",
     "printed no finite number on stdout for the original weights (stderr: no stderr)"),
    (f"{sys.executable} -c 'import sys; print(97.5, file=sys.stderr)' {{weights}}",
     "printed no finite number on stdout for the original weights (stderr: 97.5)"),
    ("echo nan {weights} | cut -c1-3", "printed no finite number"),
])
def test_a_failing_eval_command_is_a_clean_error_and_writes_nothing(runner, tmp_path,
                                                                   private_tmp, command,
                                                                   message):
    dst = tmp_path / "m.mpz"
    result = runner.invoke(cli, ["compress", str(MLP), str(dst), "--bits", "8", "--eval",
                                 command])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert not dst.exists() and list(private_tmp.iterdir()) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--eval", "python eval.py"], "must contain {weights}"),
    (["--max-drop", "0.5"], "need --eval"),
    (["--lower-is-better"], "need --eval"),
    (["--eval", "echo 1 {weights}", "--max-drop", "nan"], "--max-drop must be a finite number"),
])
def test_gate_usage_errors(runner, tmp_path, args, message):
    result = runner.invoke(cli, ["compress", str(MLP), str(tmp_path / "m.mpz"), *args])
    assert result.exit_code == 2 and message in result.stderr


def test_a_quoted_placeholder_and_a_path_with_spaces_and_quotes(runner, tmp_path, private_tmp):
    folder = tmp_path / "it's a dir"
    folder.mkdir()
    src = folder / "digits mlp.h5"
    src.write_bytes(MLP.read_bytes())
    command = f"{sys.executable} {SAMPLES / 'eval_digits.py'} \"{{weights}}\""
    result = runner.invoke(cli, ["compress", str(src), str(folder / "m.mpz"), "--bits", "8",
                                 "--eval", command, "--report-json", "-"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["task_metric"]["compressed"] == 97.56


def test_an_interrupted_eval_leaves_no_process_behind(tmp_path):
    """SIGTERM during the eval command: its whole process group goes, with the temp copy."""
    import os
    import signal
    import subprocess
    import time
    marker = tmp_path / "started"
    command = f"touch {marker}; sleep 30; echo 1 {{weights}}"
    child = subprocess.Popen([sys.executable, "-m", "modelpress_cli", "compress", str(MLP),
                              str(tmp_path / "m.mpz"), "--eval", command],
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=30)
    assert child.returncode == 143
    time.sleep(0.5)
    survivors = subprocess.run(["pgrep", "-f", f"touch {marker}"], capture_output=True)
    assert survivors.stdout == b"" and not (tmp_path / "m.mpz").exists()
    assert os.path.exists(MLP)
