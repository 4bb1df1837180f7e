"""bench-loader runs end to end on tiny shards and reports every figure it promises."""

import argparse
import json


from vortex_data.bench import loader as bench_loader

from loader_data import build


def test_bench_loader_reports_all_figures(tmp_path, capsys):
    manifest = build(tmp_path, "sunrgbd", 6, 4, array_codec="png")
    parser = argparse.ArgumentParser()
    bench_loader.add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench-loader", str(manifest), "--samples", "8", "--batch-size", "2", "--epochs", "2",
                              "--size", "32", "48", "--latency-ms", "0", "2", "--target-rate", "10",
                              "--rounds", "2", "--compare-samples", "6", "--json", str(tmp_path / "b.json")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for needle in ("per CPU second", "stage time", "peak RSS", "opens per 1,000", "(a) RGB JPEG decode floor",
                   "0ms per open", "2ms per open", "(c) webdataset stock", "target 10 img/s", "(d) side by side",
                   "loader photometric=cpu", "loader photometric=device", "device phase photometric=device"):
        assert needle in out
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["tree_opens_per_1000"] == 4000  # json, rgb, depth, seg: one open each per sample
    assert res["stream"]["opens_per_1000"] <= 1000 * 2 * 2 / 16  # 2 shards, 2 epochs, 16 samples
    # The stock decoders squash 16-bit PNG depth to 8 bits: the reason the loader decodes depth itself.
    assert res["webdataset_stock"]["depth_png_decoded_bits"] == [8]
    assert res["tree"]["2ms"]["per_wall_s"] < res["tree"]["0ms"]["per_wall_s"]
    sb = res["side_by_side"]
    assert all(len(v) == 2 and min(v) > 0 for v in sb["ms_per_item_rounds"].values())
    assert {"jpeg floor (cv2 decode)", "loader decode=device", "webdataset + torchvision v2"} <= set(sb["ms_per_item_median"])


def test_bench_loader_builds_the_real_photo_set(nyu_photos, tmp_path, capsys):
    """--photos: perturbed real NYU frames, each JPEG different, about 100 KB at q95."""
    nyu = nyu_photos
    from vortex_data.bench.photos import build_photo_set
    from vortex_data.stream.shard_reader import ShardReader

    manifest = build_photo_set(nyu, tmp_path / "set", 6)
    shard = json.loads(manifest.read_text())["shards"][0]["path"]
    reader = ShardReader()
    url = str((manifest.parent / shard).resolve())
    got = reader.read_group(url, list(reader.table(url)))
    jpegs = [m["rgb.jpg"] for m in got.values()]
    assert len(got) == 6 and len(set(jpegs)) == 6
    assert 60_000 < sum(map(len, jpegs)) / 6 < 160_000
    assert all({"depth.npy.zst", "seg.npy.zst", "json"} <= set(m) for m in got.values())


def _bench_args(manifests, tmp_path):
    return ["bench-loader", *map(str, manifests), "--samples", "8", "--batch-size", "2", "--epochs", "1",
            "--size", "32", "48", "--latency-ms", "0", "--rounds", "1", "--compare-samples", "6"]


def test_bench_loader_runs_on_label_less_and_mixed_manifests(tmp_path, capsys):
    """DIODE and most of SUN RGB-D have no labels: the torchvision peer used to assume a seg member
    and the run ended in 'generator raised StopIteration'."""
    from vortex_data.cli import main

    diode = build(tmp_path / "d", "diode", 6, 4, with_seg=False)
    nyu = build(tmp_path / "n", "nyu", 6, 4)
    for manifests in ([diode], [diode, nyu]):
        assert main(_bench_args(manifests, tmp_path)) == 0
        out = capsys.readouterr().out
        assert "webdataset + torchvision v2:" in out and "(d) side by side" in out


def test_cli_keeps_the_traceback_of_a_bug_and_shortens_only_package_errors(tmp_path, monkeypatch, capsys):
    import pytest

    from vortex_data.bench import side_by_side
    from vortex_data.cli import main
    from vortex_data.stream.mixture import MixtureError

    manifest = build(tmp_path, "nyu", 6, 4)

    def bug(*a, **k):
        raise RuntimeError("generator raised StopIteration")
    monkeypatch.setattr(side_by_side, "tv2_baseline", bug)
    with pytest.raises(RuntimeError, match="StopIteration"):  # a bug: not turned into 'error: ...', exit 2
        main(_bench_args([manifest], tmp_path))

    def bad_input(*a, **k):
        raise MixtureError(f"{manifest}: the problem")
    monkeypatch.setattr(side_by_side, "tv2_baseline", bad_input)
    assert main(_bench_args([manifest], tmp_path)) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"vortex-data bench-loader: error: {manifest}: the problem"]
