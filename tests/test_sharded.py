"""Sharded .safetensors checkpoints (a folder with *.safetensors.index.json) as input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import model, read_all, write_safetensors

import modelpress_cli as mp
from modelpress_cli.cli import cli
from modelpress_cli.errors import FormatError
from modelpress_cli.formats import open_reader


def sharded(folder: Path, tensors: dict[str, np.ndarray], n_shards: int = 3,
            edit=None) -> Path:
    """Write the hub's layout: model-0000k-of-0000n.safetensors files and the index."""
    folder.mkdir(exist_ok=True)
    names = list(tensors)
    weight_map = {}
    for k in range(n_shards):
        shard = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k::n_shards]}
        write_safetensors(folder / shard, part, {"format": "pt"})
        weight_map.update({n: shard for n in part})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
             "weight_map": weight_map}
    if edit:
        edit(index)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def test_a_sharded_checkpoint_compresses_from_its_folder_or_index(tmp_path, runner):
    tensors = model()
    folder = sharded(tmp_path / "ckpt", tensors)
    for src in (folder, folder / "model.safetensors.index.json"):
        result = runner.invoke(cli, ["compress", str(src), str(tmp_path / "m.mpz"), "--bits",
                                     "8", "--force", "--report-json", "-"])
        assert result.exit_code == 0, result.stderr
        totals = json.loads(result.stdout)["totals"]
        assert totals["tensors"] == len(tensors)
        assert totals["original_bytes"] == sum(p.stat().st_size for p in folder.iterdir())
    mp.compress(folder, tmp_path / "lossless.mpz")
    mp.decompress(tmp_path / "lossless.mpz", tmp_path / "one.safetensors")
    back = read_all(tmp_path / "one.safetensors")
    assert sorted(back) == sorted(tensors)
    assert all(back[n].tobytes() == tensors[n].tobytes() for n in tensors)
    with open_reader(folder) as reader:
        assert reader.metadata["index_metadata"]["total_size"] > 0


@pytest.mark.parametrize(("edit", "message"), [
    (lambda i: i["weight_map"].update({"ghost": "model-00001-of-00003.safetensors"}),
     "tensor 'ghost': is in the index but in no shard"),
    (lambda i: i["weight_map"].update({"layer0.bias": "model-00002-of-00003.safetensors"}),
     "tensor 'layer0.bias': is in shard 'model-00003-of-00003.safetensors', but the index "
     "says 'model-00002-of-00003.safetensors'"),
    (lambda i: i["weight_map"].update({"ghost": "../evil.safetensors"}),
     "is not a plain file name"),
    (lambda i: i["weight_map"].update({"ghost": "model-00009-of-00003.safetensors"}),
     "named in the index is missing"),
    (lambda i: i.pop("weight_map"), "needs a weight_map"),
])
def test_an_inconsistent_index_is_refused(tmp_path, edit, message):
    folder = sharded(tmp_path / "ckpt", model(), edit=edit)
    with pytest.raises(FormatError, match=message.replace("(", r"\(")) as err:
        open_reader(folder).close()
    assert str(err.value).startswith(str(folder / "model.safetensors.index.json"))


def test_a_folder_without_one_index_is_refused(tmp_path, runner):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(cli, ["compress", str(tmp_path / "empty"), str(tmp_path / "m.mpz")])
    assert result.exit_code == 1
    assert "holds 0 files named *.safetensors.index.json" in result.stderr


def test_a_sharded_round_trip_writes_the_hub_layout(tmp_path, runner):
    tensors = model()
    mp.compress(sharded(tmp_path / "ckpt", tensors), tmp_path / "m.mpz")
    out = tmp_path / "out"
    result = runner.invoke(cli, ["decompress", str(tmp_path / "m.mpz"), str(out),
                                 "--shard-size", "20kB"])
    assert result.exit_code == 0, result.stderr
    files = sorted(p.name for p in out.iterdir())
    n = len(files) - 1
    assert files[-1] == "model.safetensors.index.json" and n > 2
    assert files[:-1] == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
    with open_reader(out) as reader:  # our sharded reader checks index against shards
        back = {i.name: reader.read(i.name) for i in reader.infos()}
        assert reader.metadata["__metadata__"] == {"format": "pt"}
    assert sorted(back) == sorted(tensors)
    assert all(back[k].tobytes() == tensors[k].tobytes() for k in tensors)
    for shard in files[:-1]:  # no shard over the limit unless one tensor alone is larger
        with open_reader(out / shard) as reader:
            infos = list(reader.infos())
        assert len(infos) == 1 or sum(i.n_bytes for i in infos) <= 20_000


def test_sharded_output_is_atomic_and_needs_force(tmp_path, runner):
    mp.compress(sharded(tmp_path / "ckpt", model()), tmp_path / "m.mpz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    result = runner.invoke(cli, ["decompress", str(tmp_path / "m.mpz"), str(out),
                                 "--shard-size", "1GB"])
    assert result.exit_code == 1 and "already exists" in result.stderr
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    result = runner.invoke(cli, ["decompress", str(tmp_path / "m.mpz"), str(out),
                                 "--shard-size", "1GB", "--force"])
    assert result.exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["model-00001-of-00001.safetensors",
                                                     "model.safetensors.index.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "m.mpz", "out"]


@pytest.mark.parametrize(("size", "message"), [("big", "is not a size like 2GB"),
                                               ("0", "is not a positive size")])
def test_a_bad_shard_size_is_a_usage_error(tmp_path, runner, size, message):
    mp.compress(sharded(tmp_path / "ckpt", model()), tmp_path / "m.mpz")
    result = runner.invoke(cli, ["decompress", str(tmp_path / "m.mpz"), str(tmp_path / "o"),
                                 "--shard-size", size])
    assert result.exit_code == 2 and message in result.stderr
