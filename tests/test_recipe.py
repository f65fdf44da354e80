"""Recipes: matching, precedence, what the report shows, and messages for bad recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, model, write_npz

import modelpress_cli as mp
from modelpress_cli.cli import cli
from modelpress_cli.errors import ConfigError
from modelpress_cli.recipe import load_recipe


def recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


@pytest.fixture
def src(tmp_path) -> Path:
    return write_npz(tmp_path / "m.npz", model())


RECIPE = """
[defaults]
bits = 4

[[rules]]
match = "layer*.kernel"     # glob
bits = 3

[[rules]]
match = "layer0.*"          # would match layer0.kernel too, but the rule above came first
keep = true

[[rules]]
match = "re:(embed|lm_head)\\\\.weight"
bits = 8
group_size = 32

[[rules]]
match = "decoder.*"         # matches nothing in this model
bits = 2
"""


def methods(report) -> dict[str, tuple[str, str | None]]:
    return {r.name: (r.method, r.rule) for r in report.rows}


def test_first_matching_rule_wins_and_is_reported(tmp_path, src):
    report = mp.compress(src, tmp_path / "m.mpz", recipe=recipe(tmp_path, RECIPE))
    got = methods(report)
    assert got["layer0.kernel"] == ("q3 g64 sym", "rules[0] (layer*.kernel)")
    assert got["layer1.kernel"] == ("q3 g64 sym", "rules[0] (layer*.kernel)")
    assert got["layer0.bias"] == ("lossless", "rules[1] (layer0.*)")
    assert got["embed.weight"] == ("q8 g32 sym", "rules[2] (re:(embed|lm_head)\\.weight)")
    assert got["conv.kernel"] == ("q4 g64 sym", None)  # the recipe's defaults
    assert got["small.kernel"] == ("lossless", None)   # defaults keep small tensors exact
    assert report.warnings == [f"{tmp_path / 'recipe.toml'}: rules[3] (decoder.*) matched no "
                               "tensor"]


def test_a_rule_applies_whatever_the_tensor_size(tmp_path, src):
    path = recipe(tmp_path, '[[rules]]\nmatch = "small.kernel"\nbits = 8\n')
    assert methods(mp.compress(src, tmp_path / "m.mpz", recipe=path))["small.kernel"][0] == \
        "q8 g64 sym"


def test_flags_override_defaults_but_never_rules(runner, tmp_path, src):
    path = recipe(tmp_path, RECIPE)
    result = runner.invoke(cli, ["compress", str(src), str(tmp_path / "m.mpz"), "--config",
                                 str(path), "--bits", "8", "--group-size", "128",
                                 "--report-json", "-"])
    assert result.exit_code == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)["tensors"]}
    assert rows["conv.kernel"]["method"] == "q8 g128 sym"          # flag beat the default
    assert rows["layer0.kernel"]["method"] == "q3 g128 sym"        # rule kept its bits
    assert rows["embed.weight"]["method"] == "q8 g32 sym"          # rule kept its group
    assert rows["layer0.kernel"]["rule"] == "rules[0] (layer*.kernel)"
    assert "rules[3] (decoder.*) matched no tensor" in result.stderr


def test_inspect_shows_the_rule_of_each_tensor(runner, tmp_path, src):
    mp.compress(src, tmp_path / "m.mpz", recipe=recipe(tmp_path, RECIPE))
    facts = mp.inspect(tmp_path / "m.mpz")
    rules = {t["name"]: t["rule"] for t in facts["tensors"]}
    assert rules["layer0.bias"] == "rules[1] (layer0.*)" and rules["conv.kernel"] is None
    shown = runner.invoke(cli, ["inspect", str(tmp_path / "m.mpz")]).stdout
    assert "lossless [rules[1] (layer0.*)]" in shown


def test_tied_tensors_are_stored_once_only_when_treated_alike(tmp_path, src):
    path = recipe(tmp_path, '[defaults]\nbits = 4\n[[rules]]\nmatch = "lm_head.weight"\n'
                            'keep = true\n')
    report = mp.compress(src, tmp_path / "m.mpz", recipe=path)
    got = methods(report)
    assert got["embed.weight"][0] == "q8 g64 sym" and got["lm_head.weight"][0] == "lossless"
    loaded = mp.load(tmp_path / "m.mpz")
    assert np.array_equal(loaded["lm_head.weight"], model()["lm_head.weight"])


@pytest.mark.parametrize(("text", "message"), [
    ('[defaults]\nbitz = 4\n', "[defaults]: unknown key(s) bitz"),
    ('[[rules]]\nmatch = "a*"\nbits = 4\ngroupsize = 8\n',
     "rules[0] (a*): unknown key(s) groupsize"),
    ('[[rules]]\nmatch = "a*"\nbits = 4\n[[rules]]\nmatch = "b*"\nbits = 11\n',
     "rules[1] (b*): --bits must be 2 to 8 or 16, got 11"),
    ('[[rules]]\nmatch = "a*"\nnm = "2-4"\n', "rules[0] (a*): nm must look like 2:4"),
    ('[[rules]]\nmatch = "a*"\nprune = 1.5\n', "rules[0] (a*): sparsity must be in [0, 1)"),
    ('[[rules]]\nmatch = "re:(unclosed"\nbits = 4\n', "bad regular expression"),
    ('[[rules]]\nbits = 4\n', 'rules[0] needs match = "<glob>" or "re:<regex>"'),
    ('[[rules]]\nmatch = "a*"\nkeep = true\nbits = 4\n', "keep = true stands alone"),
    ('[quantize]\nbits = 4\n', "unknown section(s) ['quantize']"),
    ('[defaults]\nbits = \n', "not valid TOML: Invalid value (at line 2, column 8)"),
    ('[defaults]\nbits = 4.0\n', "--bits must be 2 to 8 or 16, got 4.0"),
    ('[defaults]\nmin_elements = true\n', "min_elements must be an integer"),
    ('[[rules]]\nmatch = "a*"\nkeep = false\n', "keep = true stands alone"),
    ('[rules]\nmatch = "a*"\nbits = 4\n', "write [[rules]], not [rules]"),
])
def test_bad_recipes_name_the_rule_key_or_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(recipe(tmp_path, text))
    assert str(err.value).startswith(f"{tmp_path / 'recipe.toml'}: ")
    assert message in str(err.value)


def test_a_bad_recipe_is_a_usage_error_before_anything_is_written(runner, tmp_path, src):
    result = runner.invoke(cli, ["compress", str(src), str(tmp_path / "m.mpz"), "--config",
                                 str(recipe(tmp_path, "[defaults]\nbits = 99\n"))])
    assert result.exit_code == 2 and "--bits must be 2 to 8 or 16, got 99" in result.stderr
    assert not (tmp_path / "m.mpz").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "docs" / "recipes").glob("*.toml")),
                         ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    loaded = load_recipe(path)
    assert loaded.defaults or loaded.rules


def test_a_rule_that_sets_no_compression_keeps_the_default_protections(tmp_path, src):
    path = recipe(tmp_path, '[defaults]\nbits = 3\n[[rules]]\nmatch = "*"\ngroup_size = 32\n')
    got = methods(mp.compress(src, tmp_path / "m.mpz", recipe=path))
    assert got["layer0.bias"][0] == "lossless" and got["embed.weight"][0] == "q8 g32 sym"
    assert got["layer0.kernel"][0] == "q3 g32 sym"


def test_a_rule_on_an_empty_tensor_is_harmless(tmp_path):
    src = write_npz(tmp_path / "e.npz", {"empty": np.zeros((0, 8), np.float32),
                                         "w": np.ones((8, 8), np.float32)})
    path = recipe(tmp_path, '[[rules]]\nmatch = "*"\nbits = 4\n')
    got = mp.compress(src, tmp_path / "m.mpz", recipe=path)
    assert [(r.method, r.note) for r in got.rows] == [("lossless", "empty"), ("q4 g64 sym", None)]


def test_embeddings_are_not_pruned_unless_a_rule_says_so(tmp_path, src):
    got = methods(mp.compress(src, tmp_path / "m.mpz", bits=4, nm="2:4"))
    assert got["embed.weight"][0] == "q8 g64 sym" and got["layer0.kernel"][0].startswith("2:4")
    path = recipe(tmp_path, '[[rules]]\nmatch = "embed.weight"\nbits = 4\nnm = "2:4"\n')
    got = methods(mp.compress(src, tmp_path / "m.mpz", recipe=path, force=True))
    assert got["embed.weight"][0] == "2:4 sparse + q4 g64 sym"


def test_a_flag_replaces_the_recipe_s_kind_of_pruning(runner, tmp_path, src):
    path = recipe(tmp_path, '[defaults]\nbits = 8\nnm = "2:4"\n')
    result = runner.invoke(cli, ["compress", str(src), str(tmp_path / "m.mpz"), "--config",
                                 str(path), "--prune", "0.5", "--report-json", "-"])
    assert result.exit_code == 0, result.stderr
    rows = {r["name"]: r["method"] for r in json.loads(result.stdout)["tensors"]}
    assert rows["conv.kernel"] == "prune 50% + q8 g64 sym + sparse"
