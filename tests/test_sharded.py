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
