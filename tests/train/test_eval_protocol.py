"""`vortex-data eval`: the published NYU protocol by default for NYU manifests (official test
split when the manifest has it, predictions upsampled to 480x640 and scored against
full-resolution ground truth, Eigen crop, 1e-3..10 m), the protocol stated first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vortex_data.fixtures.nyu import write_demo_nyu
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.convert.nyu.converter import NyuConverter
from vortex_data.format.manifest import load_manifest
from vortex_data.train.metrics import EIGEN_CROP_480x640
from vortex_data.train.protocol import choose, describe_nyu_split, resolve_split


@pytest.fixture(scope="module")
def nyu(tmp_path_factory) -> Path:
    """NYU shards of a 4-frame labelled .mat, split by a splits file: frame 1 train, 2-4 test."""
    root = tmp_path_factory.mktemp("nyu")
    mat = write_demo_nyu(root / "nyu_depth_v2_labeled.mat", 4)
    splits = root / "splits.json"
    splits.write_text(json.dumps({"train": [1], "test": [2, 3, 4]}))
    build_shards(NyuConverter(mat, split_scheme="official", splits_file=splits),
                 BuildConfig(out_dir=root / "shards", manifest_dir=root / "manifests", workers=1, progress=False))
    return root / "manifests"


class ConstantDepth(torch.nn.Module):
    """Predicts 2 m everywhere at its input size; records the input sizes it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[tuple[int, ...]] = []

    def forward(self, rgb):
        self.inputs.append(tuple(rgb.shape))
        b, _, h, w = rgb.shape
        return {"depth": torch.full((b, 1, h, w), 2.0), "seg": torch.zeros(b, 6, h, w)}


def full_resolution_rmse(manifest: Path, pred: float) -> float:
    """Mean per-image RMSE of a constant prediction against each frame's depth as stored (480x640),
    inside the Eigen crop, over 1e-3 < gt < 10 m, computed here straight from the shards."""
    from vortex_data.stream.mixture import read_source_index
    from vortex_data.format.schema import decode_sample
    from vortex_data.stream.shard_reader import ShardReader

    ix, reader, out = read_source_index(str(manifest)), ShardReader(), []
    y0, y1, x0, x1 = EIGEN_CROP_480x640
    for url in ix.shards:
        for key, members in sorted(reader.read_group(url, reader.table(url)).items()):
            gt = decode_sample(members, key)["depth_mm"].astype(np.float64) / 1000
            assert gt.shape == (480, 640)
            gt = gt[y0:y1, x0:x1]
            valid = (gt > 1e-3) & (gt < 10)
            out.append(np.sqrt(np.mean((pred - gt[valid]) ** 2)))
    assert len(out) == len(ix)
    return float(np.mean(out))


def test_nyu_protocol_scores_upsampled_predictions_against_full_resolution_ground_truth(nyu, monkeypatch):
    from vortex_data.train import evaluate as ev
    from vortex_data.train.data import stream_loader

    net = ConstantDepth()
    cfg = {"image_size": [96, 128], "eval_min_depth": 0.5, "eval_max_depth": 5.0}  # the protocol's range wins
    monkeypatch.setattr(ev, "load_network", lambda path, device, **kw: (net, cfg))
    lines = []
    proto, res = ev.run_evaluation(Path("ckpt"), str(nyu / "nyu-{split}.json"), stream_loader, 2, "test", None,
                                   False, "auto", announce=lines.append)
    assert proto.name == "nyu" and proto.loader_size == (480, 640) and proto.eigen_crop
    assert {s[-2:] for s in net.inputs} == {(96, 128)}  # the network sees its training size
    assert res["all"]["images"] == 3
    assert res["all"]["rmse"] == pytest.approx(full_resolution_rmse(nyu / "nyu-test.json", 2.0), rel=1e-5)
    assert lines == [proto.headline] and lines[0].startswith("protocol nyu: split 'test' of splits file ")
    assert "NOT the official 654-frame test split" in lines[0] and "NOT comparable" in lines[0]


def test_the_official_test_split_is_named_and_only_the_whole_of_it_is_comparable(nyu):
    m = load_manifest(nyu / "nyu-test.json")
    m.converter["options"]["splits_file"] = "shipped"  # as an official build of the real file records it
    m.shards[0]["samples"] += 654 - sum(s["samples"] for s in m.shards)
    assert describe_nyu_split(m) == ("the official test split, 654 of 654 frames", True)
    m.shards[0]["samples"] -= 1
    what, whole = describe_nyu_split(m)
    assert not whole and what.startswith("the official test split, 653 of 654 frames (the rest rejected")
    m.shards[0]["samples"] += 1
    m.converter["output"]["resize"] = 240
    assert describe_nyu_split(m)[1] is False and "not full resolution" in describe_nyu_split(m)[0]
    val = load_manifest(nyu / "nyu-test.json")
    val.split = "val"
    val.converter["options"].update(split_scheme="scenes80")
    val.converter["options"].pop("splits_file")
    assert describe_nyu_split(val) == ("split 'val' of the scenes80 scheme, 3 frames, NOT the official 654-frame "
                                       "test split", False)


def test_split_defaults_to_test_where_the_nyu_manifest_has_it(nyu, tmp_path):
    assert resolve_split(str(nyu / "nyu-{split}.json"), None, "auto") == "test"
    assert resolve_split(str(nyu / "nyu-{split}.json"), "train", "auto") == "train"
    assert resolve_split(str(tmp_path / "nyu-{split}.json"), None, "auto") == "val"  # no test manifest there
    assert resolve_split(str(nyu / "nyu-{split}.json"), None, "plain") == "val"


def test_other_datasets_default_to_plain_and_nyu_protocol_refuses_them(tmp_path):
    from loader_data import build

    diode = str(build(tmp_path, "diode", 4, 4))
    p = choose("auto", diode, (64, 64), None, False, (1e-3, 10.0))
    assert p.name == "plain" and p.loader_size == (64, 64) and p.input_size is None and not p.comparable
    assert p.headline.startswith("protocol plain: scored at 64x64") and "not comparable" in p.headline
    with pytest.raises(ValueError, match="needs an NYU manifest, this one holds 'diode'"):
        choose("nyu", diode, (64, 64), None, False, (1e-3, 10.0))


def test_cli_states_the_protocol_first(nyu, tmp_path, capsys):
    pytest.importorskip("timm")
    from vortex_data.cli import main
    from vortex_data.train.config import TrainConfig
    from vortex_data.train.data import synthetic_loader
    from vortex_data.train.loop import Trainer

    torch.set_num_threads(1)
    run = tmp_path / "run"
    cfg = TrainConfig(run_dir=str(run), loader="synthetic", steps=1, batch_size=1, image_size=(64, 64),
                      num_workers=0, warmup_steps=1, profile_steps=0)
    assert Trainer(cfg, synthetic_loader).run() == 0
    capsys.readouterr()
    out_json = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run / "stage1" / "checkpoints"), "--manifest",
                 str(nyu / "nyu-{split}.json"), "--batch-size", "3", "--json", str(out_json)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("protocol nyu: split 'test' of splits file") and "network input 64x64" in lines[0]
    assert lines[1].split()[0] == "dataset" and any(line.startswith("nyu ") for line in lines)
    saved = json.loads(out_json.read_text())
    assert saved["protocol"]["name"] == "nyu" and saved["results"]["all"]["images"] == 3
