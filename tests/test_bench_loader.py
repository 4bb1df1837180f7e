"""bench-loader runs end to end on tiny shards and reports every figure it promises."""

import argparse
import json

from vortex_data import bench_loader

from loader_data import build


def test_bench_loader_reports_all_figures(tmp_path, capsys):
    manifest = build(tmp_path, "sunrgbd", 6, 4, array_codec="png")
    parser = argparse.ArgumentParser()
    bench_loader.add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench-loader", str(manifest), "--samples", "8", "--batch-size", "2", "--epochs", "2",
                              "--size", "32", "48", "--latency-ms", "0", "2", "--target-rate", "10",
                              "--json", str(tmp_path / "b.json")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for needle in ("per CPU second", "stage time", "peak RSS", "opens per 1,000", "(a) RGB JPEG decode floor",
                   "0ms per open", "2ms per open", "(c) webdataset stock", "target 10 img/s"):
        assert needle in out
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["tree_opens_per_1000"] == 4000  # json, rgb, depth, seg: one open each per sample
    assert res["stream"]["opens_per_1000"] <= 1000 * 2 * 2 / 16  # 2 shards, 2 epochs, 16 samples
    # The stock decoders squash 16-bit PNG depth to 8 bits: the reason the loader decodes depth itself.
    assert res["webdataset_stock"]["depth_png_decoded_bits"] == [8]
    assert res["tree"]["2ms"]["per_wall_s"] < res["tree"]["0ms"]["per_wall_s"]
