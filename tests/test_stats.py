"""`vortex-data stats`: numbers against brute force on generated shards, label-less risk against
simulation, planted duplicates, and a well-formed self-contained report."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from vortex_data.cli import main
from vortex_data.fixtures.scene import random_room, random_view, render
from vortex_data.format.manifest import load_manifest
from vortex_data.format.tar_index import iter_samples
from vortex_data.format.schema import Sample, decode_sample, depth_to_mm
from vortex_data.format.geometry import Intrinsics
from vortex_data.format.tar_index import make_key
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.convert.base import Converter, Enumeration, FrameRef
from vortex_data.stats import compute_stats, write_outputs
from vortex_data.stats import hamming_index, phash
from vortex_data.stats.phash import frame_hashes, min_hamming
from vortex_data.stats.mixture_risk import p_labelless_iid, read_mixture, simulate_labelless_iid
from vortex_data.stats import gallery, scan
from vortex_data.stats.report import PLOT_TITLES
from vortex_data.views import INVALID_RGB

W, H = 256, 192


def scene(seed: int, fx_scale: float = 0.9):
    rng = np.random.default_rng(seed)
    view = random_view(rng, fx_scale * W, fx_scale * W, W / 2 - 0.5, H / 2 - 0.5, W, H)
    return render(random_room(rng), view, noise_seed=seed), view


class SceneConverter(Converter):
    """Frames rendered from seeds; payload = (seed, labelled, crop-copy)."""

    name = "scene"
    description = "test scenes"
    splits = ("train",)

    def __init__(self, dataset: str, frames: list[tuple[int, bool, bool]], fx_scale: float):
        self.dataset, self.frames, self.fx_scale, self.src = dataset, frames, fx_scale, Path(".")
        self.name = dataset  # the writer names manifests and shards after the converter

    @classmethod
    def from_args(cls, src, args):  # pragma: no cover - not used from the CLI
        raise NotImplementedError

    def options(self):
        return {"dataset": self.dataset, "fx_scale": self.fx_scale}

    def enumerate(self, splits):
        return Enumeration([FrameRef("train", f"f{i:03d}", (), p) for i, p in enumerate(self.frames)])

    def load(self, ref):
        seed, labelled, crop = ref.payload
        # A crop-copy re-renders alpha's camera: it is the same frame, delivered by another dataset.
        (rgb, depth, seg), view = scene(seed, 0.9 if crop else self.fx_scale)
        depth = np.where(depth < 6.0, depth, np.nan)  # some invalid pixels
        k = Intrinsics(view.fx, view.fy, view.cx, view.cy)
        if crop:  # SUN-style border crop of an NYU frame, resized back up and re-encoded below as JPEG
            # NYU 640x480 -> SUN RGB-D kv1 561x427 keeps rows 44..470 and columns 40..600.
            y0, y1, x0, x1 = round(H * 44 / 480), round(H * 471 / 480), round(W * 40 / 640), round(W * 601 / 640)
            rgb, depth, seg = rgb[y0:y1, x0:x1], depth[y0:y1, x0:x1], seg[y0:y1, x0:x1]
            size = (round(rgb.shape[1] * 1.1), round(rgb.shape[0] * 1.1))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
            depth = cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)
            seg = cv2.resize(seg, size, interpolation=cv2.INTER_NEAREST)
            k = k.cropped(x0, y0).scaled(1.1, 1.1)
        conv = depth_to_mm(depth, np.isfinite(depth))
        return Sample(make_key(self.dataset, "train", ref.frame_id), rgb, conv.depth_mm, k,
                      seg=seg if labelled else None)


def build(tmp: Path, dataset: str, frames, fx_scale: float) -> Path:
    cfg = BuildConfig(out_dir=tmp / "shards", manifest_dir=tmp / "manifests", workers=1, shard_samples=3,
                      progress=False)
    return build_shards(SceneConverter(dataset, frames, fx_scale), cfg).manifests[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stats")
    # alpha: 6 frames, 4 labelled; beta: 4 unlabelled frames, frame 0 a cropped copy of alpha's frame 0.
    a = build(tmp, "alpha", [(100 + i, i < 4, False) for i in range(6)], 0.9)
    b = build(tmp, "beta", [(100, False, True)] + [(200 + i, False, False) for i in range(3)], 0.6)
    stats = compute_stats([a, b], batch_size=4, workers=1, progress=False)
    return tmp, a, b, stats


def brute(manifest: Path) -> dict:
    """Decode every sample of a manifest's shards and compute the numbers with plain numpy."""
    depth, rgb, seg = [], [], []
    for shard in load_manifest(manifest).shard_paths():
        for key, members in iter_samples(shard):
            s = decode_sample(members, key)
            depth.append(s["depth_mm"].ravel())
            rgb.append(s["rgb"].reshape(-1, 3))
            if s["has_seg"]:
                seg.append(s["seg"].ravel())
    return {"depth": np.concatenate(depth), "rgb": np.concatenate(rgb).astype(np.float64),
            "seg": np.concatenate(seg) if seg else np.zeros(0, np.uint8)}


def test_depth_histogram_and_percentiles_match_numpy(built):
    _, a, _, stats = built
    ref = brute(a)
    src = stats["sources"][0]
    valid = ref["depth"][ref["depth"] > 0].astype(np.float64) / 1000
    edges = np.asarray(src["depth_hist"]["edges_m"])
    # Bin by integer mm to avoid float-edge ties; same edges as the report.
    counts, _ = np.histogram(ref["depth"][ref["depth"] > 0], bins=edges * 1000)
    assert src["depth_hist"]["counts"] == counts.tolist()
    assert src["depth_valid_pixels"] == valid.size
    for q in (1, 5, 25, 50, 75, 95, 99):
        assert src["depth_percentiles_m"][f"p{q}"] == pytest.approx(np.percentile(valid, q, method="inverted_cdf"))


def test_rgb_mean_std_and_class_frequency_match_numpy(built):
    _, a, _, stats = built
    ref = brute(a)
    src = stats["sources"][0]
    np.testing.assert_allclose(src["rgb_mean"], ref["rgb"].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(src["rgb_std"], ref["rgb"].std(axis=0), rtol=1e-9)
    labelled = ref["seg"][ref["seg"] != 255]
    freq = np.bincount(labelled, minlength=6) / labelled.size
    np.testing.assert_allclose(src["class_frequency"], freq, rtol=1e-12)
    assert src["labelled_fraction"] == pytest.approx(4 / 6)
    assert stats["sources"][1]["labelled_fraction"] == 0


def test_normalised_focal_length_shows_the_two_cameras(built):
    _, _, _, stats = built
    a, b = stats["sources"]
    assert a["fx_over_width"]["values"] == [pytest.approx(0.9, abs=1e-4)]
    assert b["fx_over_width"]["min"] == pytest.approx(0.6, abs=1e-4)
    x0, x1 = round(W * 40 / 640), round(W * 601 / 640)
    resized = round((x1 - x0) * 1.1)
    assert b["fx_over_width"]["max"] == pytest.approx(0.9 * W * 1.1 / resized, abs=1e-4)  # the cropped copy


def test_mixture_weights_by_frames_and_risk(built):
    _, _, _, stats = built
    mix = stats["mixture"]
    assert [s["weight"] for s in mix["sources"]] == pytest.approx([0.6, 0.4])
    r = mix["label_risk"]
    p = 0.6 * 4 / 6
    assert r["closed_form_iid"] == pytest.approx((1 - p) ** 4)
    assert abs(r["simulated_iid"] - r["closed_form_iid"]) < 5 * r["simulated_iid_stderr"]
    # An epoch of 10 with 4 labelled: hypergeometric C(6,4)/C(10,4), lower than the iid value.
    assert r["closed_form_quota"] == pytest.approx(15 / 210)
    assert r["closed_form_quota"] < r["closed_form_iid"]


def test_closed_form_matches_simulation_for_uneven_mixture():
    rng = np.random.default_rng(3)
    labelled = [np.array([True, False, False, True, False]), np.zeros(7, bool), np.ones(2, bool)]
    fr = [f.mean() for f in labelled]
    for batch in (1, 3, 8):
        exact = p_labelless_iid([0.5, 0.4, 0.1], fr, batch)
        sim = simulate_labelless_iid([0.5, 0.4, 0.1], labelled, batch, 40000, rng)
        assert abs(sim - exact) < 5 * np.sqrt(exact * (1 - exact) / 40000) + 1e-9
    # A wrong formula would fail: (1 - p) * B is far off.
    assert abs(p_labelless_iid([0.5, 0.4, 0.1], fr, 3) - (1 - 0.3) ** 3) < 1e-12


def test_planted_duplicate_found_and_nothing_else(built):
    _, _, _, stats = built
    pairs = stats["duplicates"]["pairs"]
    assert [(p["key_a"], p["key_b"]) for p in pairs] == [("alpha/train/f000", "beta/train/f000")]
    assert stats["duplicates"]["pairs_found"] == 1


def test_hash_distance_separates_copy_from_other_frames():
    base = scene(7)[0][0]
    other = scene(8)[0][0]
    ok, jpg = cv2.imencode(".jpg", cv2.resize(base[12:-12, 10:-10], (230, 172)), [cv2.IMWRITE_JPEG_QUALITY, 80])
    copy = cv2.imdecode(jpg, cv2.IMREAD_UNCHANGED)
    h = np.stack([frame_hashes(x) for x in (base, copy, other)])
    d = min_hamming(h, h)
    assert d[0, 1] <= 6 < d[0, 2]


def _reference_frame_hashes(rgb: np.ndarray) -> np.ndarray:
    """The hashes as first written: one resize, cv2.dct and np.median per window."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    out = []
    for frac, dy, dx in phash.WINDOWS:
        ch, cw = max(1, round(h * frac)), max(1, round(w * frac))
        y0 = min(max(0, round((h - ch) / 2 + dy * h)), h - ch)
        x0 = min(max(0, round((w - cw) / 2 + dx * w)), w - cw)
        small = cv2.resize(grey[y0:y0 + ch, x0:x0 + cw], (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        low = cv2.dct(small)[:8, :8].ravel()
        out.append(int(np.packbits(low > np.median(low[1:])).view(">u8")[0]))
    return np.array(out, np.uint64)


def test_batched_hashes_equal_one_window_at_a_time():
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(40)]
    frames += [rng.integers(0, 256, (int(rng.integers(1, 200)), int(rng.integers(1, 200)), 3), dtype=np.uint8)
               for _ in range(40)]
    frames += [np.zeros((48, 64, 3), np.uint8), np.full((7, 5, 3), 200, np.uint8), scene(3)[0][0]]
    for f in frames:
        assert np.array_equal(phash.frame_hashes(f), _reference_frame_hashes(f)), f.shape


def test_batched_hashes_equal_one_window_at_a_time_on_real_frames(nyu_photos, samples_dir):
    paths = sorted(nyu_photos.rglob("rgb_*.jpg")) + sorted((samples_dir / "sunrgbd").glob("*.jpg"))
    for p in paths:
        rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        for f in (rgb, rgb[20:-30, 10:-40], cv2.resize(rgb, (300, 211))):
            assert np.array_equal(phash.frame_hashes(f), _reference_frame_hashes(f)), p


def _smooth(rng: np.random.Generator) -> np.ndarray:
    return cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (80, 60), interpolation=cv2.INTER_CUBIC)


def _edited(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """A crop, brightness change and noise of a frame, resized to another size."""
    y, x = int(rng.integers(0, 4)), int(rng.integers(0, 5))
    out = rgb[y:rgb.shape[0] - int(rng.integers(0, 4)), x:rgb.shape[1] - int(rng.integers(0, 5))].astype(np.int64)
    out = out + int(rng.integers(-25, 26)) + rng.integers(-4, 5, out.shape)
    return cv2.resize(np.clip(out, 0, 255).astype(np.uint8), (int(rng.integers(60, 100)), int(rng.integers(45, 75))))


def test_banded_search_finds_exactly_the_pairs_all_pairs_finds():
    rng = np.random.default_rng(11)
    a = [_smooth(rng) for _ in range(160)]
    b = [_smooth(rng) for _ in range(120)] + [_edited(rng, a[int(i)]) for i in rng.choice(160, 40, replace=False)]
    b = [b[i] for i in rng.permutation(len(b))]
    ha, hb = (np.stack([phash.frame_hashes(f) for f in x]) for x in (a, b))
    for t in (0, 3, 6, 9):
        want = phash.near_pairs(ha, hb, t, bands=None)
        for k in (2, 3, 4, t + 1):
            got = phash.near_pairs(ha, hb, t, bands=k)
            assert all(np.array_equal(x, y) for x, y in zip(want, got)), (t, k)
        if t == 6:
            assert len(want[0]) >= 20  # most planted copies are within the default threshold
    keys_a, keys_b = [f"a/{i}" for i in range(len(a))], np.array([f"b/{i}".encode() for i in range(len(b))])
    by_bands = phash.find_duplicates({"a": (keys_a, ha), "b": (keys_b, hb)}, bands=3)
    assert by_bands == phash.find_duplicates({"a": (keys_a, ha), "b": (keys_b, hb)}, bands=None)
    assert by_bands[1] == len(by_bands[0]) == len(phash.near_pairs(ha, hb, 6, bands=None)[0])
    # Only the closest are kept, in (distance, keys) order, and all are counted.
    few = phash.find_duplicates({"a": (keys_a, ha), "b": (keys_b, hb)}, bands=3, max_pairs=5)
    assert few == (by_bands[0][:5], by_bands[1])


def test_banded_search_on_random_hashes_with_planted_bit_flips():
    rng = np.random.default_rng(2)
    for trial in range(12):
        a = rng.integers(0, 2**64, (int(rng.integers(0, 400)), 46), dtype=np.uint64, endpoint=False)
        b = rng.integers(0, 2**64, (int(rng.integers(1, 400)), 46), dtype=np.uint64, endpoint=False)
        for _ in range(min(len(a), len(b)) // 3):  # copies within 0..8 bits, either way round
            i, j, w = int(rng.integers(len(a))), int(rng.integers(len(b))), int(rng.integers(1, 46))
            flip = np.uint64(sum(1 << int(f) for f in rng.choice(64, int(rng.integers(0, 9)), replace=False)))
            if rng.random() < 0.5:
                b[j, w] = a[i, 0] ^ flip
            else:
                a[i, w] = b[j, 0] ^ flip
        t = int(rng.integers(0, 11))
        want = phash.near_pairs(a, b, t, bands=None)
        for k in {1 if t < 3 else 2, 3, t // 2 + 1, t + 1}:
            assert all(np.array_equal(x, y) for x, y in zip(want, phash.near_pairs(a, b, t, bands=k))), (trial, t, k)


def test_choose_bands_prefers_all_pairs_when_small_and_bands_when_large():
    assert hamming_index.choose_bands([(5, 5 * 45), (5, 5 * 45)], 6) is None
    assert hamming_index.choose_bands([(50_000, 50_000 * 45)] * 2, 6) in (3, 4)
    assert hamming_index.choose_bands([(50_000, 50_000 * 45)] * 2, 63) is None


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.imgs, self.captions, self.in_caption = [], [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))
            return
        if tag not in ("meta", "br"):
            self.stack.append(tag)
        self.in_caption = tag == "figcaption"

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        self.in_caption = False

    def handle_data(self, data):
        if self.in_caption:
            self.captions.append(data)


def test_report_is_well_formed_and_self_contained(built):
    tmp, _, _, stats = built
    js, html = write_outputs(stats, tmp / "report")
    p = _Collect()
    p.feed(html.read_text())
    p.close()
    assert p.stack == []
    plots = [i for i in p.imgs if i.get("class") != "gallery"]
    assert len(plots) == len(PLOT_TITLES)
    assert all(i["src"].startswith("data:image/png;base64,") for i in plots)
    gallery_imgs = [i for i in p.imgs if i.get("class") == "gallery"]
    # the depth colour bar, then one strip per chosen frame
    assert len(gallery_imgs) == 1 + sum(len(g["frames"]) for g in stats["gallery"])
    assert all(i["src"].startswith("data:image/") for i in gallery_imgs)
    assert p.captions == list(PLOT_TITLES)
    assert "http" not in html.read_text()
    assert json.loads(js.read_text())["sources"][0]["frames"] == 6


def test_cli_with_mixture_file(built, tmp_path, capsys):
    tmp, a, b, _ = built
    mix = tmp_path / "mix.toml"
    mix.write_text(f'name = "t"\nepoch_size = 20\n[[source]]\nname = "a"\nmanifest = "{a}"\nweight = 3\n'
                   f'[[source]]\nname = "b"\nmanifest = "{b.name}"\nweight = 1\nextra = "ignored"\n')
    rc = main(["stats", "--mixture", str(mix), "--manifests-dir", str(b.parent), "--batch-size", "2",
               "--workers", "2", "--no-progress", "--out", str(tmp_path / "out")])
    assert rc == 0
    s = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert [x["weight"] for x in s["mixture"]["sources"]] == [0.75, 0.25]
    assert s["mixture"]["label_risk"]["closed_form_iid"] == pytest.approx((1 - 0.75 * 4 / 6) ** 2)
    assert (tmp_path / "out" / "report.html").is_file()


def test_bad_mixture_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[source]]\nmanifest = 'x.json'\nweight = -1\n")
    with pytest.raises(ValueError, match="bad.toml"):
        read_mixture(bad)


def _jpeg(src: str) -> np.ndarray:
    import base64
    assert src.startswith("data:image/jpeg;base64,")
    return cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def test_gallery_choice_is_seeded_and_names_the_worst_frames(built):
    _, a, b, stats = built
    g = {x["name"]: x["frames"] for x in stats["gallery"]}
    assert set(g) == {"alpha-train", "beta-train"}
    for name, manifest in (("alpha-train", a), ("beta-train", b)):
        vf = load_manifest(manifest).read_index().column("valid_fraction").to_numpy()
        frames = g[name]
        assert frames[0]["why"] == "least valid depth" and frames[0]["valid_fraction"] == pytest.approx(vf.min())
        randoms = [f["key"] for f in frames if f["why"] == "random"]
        assert len(randoms) == gallery.RANDOM_FRAMES and len({f["key"] for f in frames}) == len(frames)
    # no depth beyond 10 m in these rooms (clipped at 6 m): no 'most far depth' frame is shown
    assert not any(f["why"].startswith("most depth") for fs in g.values() for f in fs)
    again = compute_stats([a, b], batch_size=4, workers=1, progress=False)
    assert again["gallery"] == stats["gallery"]


def test_far_share_matches_numpy(built, monkeypatch):
    _, a, _, _ = built
    monkeypatch.setattr(scan, "FAR_M", 3.0)
    want = {}
    for shard in load_manifest(a).shard_paths():
        for key, members in iter_samples(shard):
            d = decode_sample(members, key)["depth_mm"]
            want[key] = (d > 3000).sum() / (d > 0).sum()
    accs, _ = scan.scan_shards([scan.ShardTask(s, (("a", None),)) for s in load_manifest(a).shard_paths()],
                               workers=1, progress=False)
    got = dict(zip((k.decode() for k in accs["a"].frame_keys()), accs["a"].far_shares()))
    assert got == pytest.approx(want) and 0 < max(got.values()) < 1


def test_gallery_strips_show_rgb_depth_labels(built):
    tmp, _, _, stats = built
    p = _Collect()
    p.feed(write_outputs(stats, tmp / "report-g")[1].read_text())
    strips = [_jpeg(i["src"]) for i in p.imgs if i.get("class") == "gallery" and "jpeg" in i["src"]]
    frames = [f for g in stats["gallery"] for f in g["frames"]]
    assert len(strips) == len(frames)
    panel_w = round(W * gallery.STRIP_HEIGHT / H)
    # 3 panels at the strip height (beta's first frame is a cropped copy of another size)
    assert all(s.shape[0] == gallery.STRIP_HEIGHT and (s.shape[1] - 8) % 3 == 0 for s in strips)
    assert all(s.shape[1] == 3 * panel_w + 8 for s, f in zip(strips, frames) if f["key"] != "beta/train/f000")
    assert any(f["valid_fraction"] < 0.99 for f in frames)
    for s, f in zip(strips, frames):
        pw = (s.shape[1] - 8) // 3
        rgb, depth = s[:, :pw], s[:, pw + 4:2 * pw + 4]
        assert rgb.std() > 10 and depth.std() > 5  # not blank
        # invalid depth (beyond 6 m in these rooms) is magenta, a colour the depth scale never uses
        magenta = (np.abs(depth.astype(int) - INVALID_RGB).sum(axis=2) < 60).mean()
        assert magenta == pytest.approx(1 - f["valid_fraction"], abs=0.03)
    labelled = [s for s, f in zip(strips, frames) if f["key"].startswith("alpha") and int(f["key"][-3:]) < 4]
    assert labelled and all(np.abs(s[:, :panel_w].astype(int) - s[:, 2 * panel_w + 8:]).mean() > 5 for s in labelled)


def test_gallery_keeps_its_size_budget():
    noise = np.random.default_rng(0).integers(0, 256, (gallery.STRIP_HEIGHT, 900, 3), dtype=np.uint8)
    data, quality = gallery._fit([noise] * 5, 200_000)
    assert sum(4 * -(-len(d) // 3) for d in data) <= 200_000 and quality < 80
    assert gallery.BUDGET_PER_SOURCE * 8 <= 4 * 2**20


def test_label_risk_counts_the_loaders_own_stratified_plans():
    from vortex_data.stats.mixture_risk import labelless_in_plan

    flags = [np.ones(40, bool), np.zeros(300, bool)]  # a labelled source at 1/8 of the draws
    strat = labelless_in_plan([1, 7], flags, 8, 800, "stratified")
    rand = labelless_in_plan([1, 7], flags, 8, 800, "random")
    assert strat["plan_labelless"] == 0 and strat["by_construction"]
    assert rand["plan_labelless"] > 0.2 and not rand["by_construction"]  # (7/8)^8 = 0.34 in expectation
    below = labelless_in_plan([1, 9], flags, 8, 800, "stratified")  # 1/10 < 1/8: some batch must miss
    assert below["plan_labelless"] > 0 and not below["by_construction"]
    partly = [np.r_[np.ones(20, bool), np.zeros(20, bool)], np.zeros(300, bool)]  # half-labelled: no guarantee
    assert not labelless_in_plan([1, 7], partly, 8, 800, "stratified")["by_construction"]


def test_per_source_batches_of_a_source_smaller_than_a_batch_are_named(built, tmp_path, capsys):
    """beta has 4 frames: a per_source batch of 8 from it holds each twice; stats says so (JSON, HTML,
    terminal) with the loader's rule, and a batch of 4 fits without a word."""
    tmp, a, b, _ = built
    mix = tmp_path / "mix.toml"
    mix.write_text(f'name = "t"\nepoch_size = 32\nbatching = "per_source"\n[[source]]\nname = "a"\nmanifest = "{a}"\n'
                   f'weight = 1\n[[source]]\nname = "b"\nmanifest = "{b}"\nweight = 1\n')
    rc = main(["stats", "--mixture", str(mix), "--batch-size", "8", "--workers", "1", "--no-progress",
               "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    s = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert rc == 0 and s["mixture"]["repeats_in_batch"] == {"a": 8 / 6, "b": 2.0}
    assert "b each sample 2 times" in out and "a each sample 1.33 times" in out
    assert "b each sample 2 times" in (tmp_path / "out" / "report.html").read_text()
    main(["stats", "--mixture", str(mix), "--batch-size", "4", "--workers", "1", "--no-progress",
          "--out", str(tmp_path / "out4")])
    assert "per_source batching" not in capsys.readouterr().out


# ---------------------------------------------------------------- the depth scale and the risk plot

def _lut_positions(panel: np.ndarray) -> np.ndarray:
    """Each valid pixel's position (0-255) on the colour map, by its nearest LUT colour."""
    from vortex_data.views import depth_lut

    px = panel.reshape(-1, 3).astype(np.int32)
    px = px[np.abs(px - INVALID_RGB).sum(axis=1) > 60]
    lut = depth_lut().astype(np.int32)
    return np.argmin(((px[:, None, :] - lut[None, :, :]) ** 2).sum(axis=2), axis=1)


def test_gallery_depth_scale_comes_from_the_data(built):
    """Rooms of 1-6 m: a fixed 0.25-40 m scale used a third of the colours; the report's scale,
    the sources' 1st-99th percentiles, gives them most of the map and is printed in the report."""
    tmp, _, _, stats = built
    lo = min(x["depth_percentiles_m"]["p1"] for x in stats["sources"])
    hi = max(x["depth_percentiles_m"]["p99"] for x in stats["sources"])
    scale = gallery.report_scale(stats["sources"])
    assert scale[0] <= lo and scale[1] >= hi and scale[0] > 0.9 * lo and scale[1] < 1.1 * hi
    text = write_outputs(stats, tmp / "report-scale")[1].read_text()
    assert f"{scale[0]:.3g} to {scale[1]:.3g} m" in text
    p = _Collect()
    p.feed(text)
    strips = [_jpeg(i["src"]) for i in p.imgs if i.get("class") == "gallery" and "jpeg" in i["src"]]
    spans = []
    for s in strips:
        pw = (s.shape[1] - 8) // 3
        pos = _lut_positions(s[::4, pw + 4:2 * pw + 4:4])
        spans.append(np.percentile(pos, 98) - np.percentile(pos, 2))
    assert max(spans) > 0.6 * 255


def test_depth_scale_rounds_outward_and_falls_back():
    from vortex_data.views import DEPTH_RANGE_M, depth_scale, pixel_scale, scale_ticks

    assert depth_scale([1.931, 2.4], [6.535, 7.841]) == (1.9, 7.9)
    assert depth_scale([None], [None]) == DEPTH_RANGE_M
    d = np.r_[np.zeros(50), np.linspace(2.0, 5.0, 1000)]  # zeros are invalid, not depth
    lo, hi = pixel_scale([d])
    assert 1.9 <= lo <= 2.1 and 4.9 <= hi <= 5.1
    ticks = scale_ticks((1.9, 6.6))
    assert ticks[0] == 1.9 and ticks[-1] == 6.6 and len(ticks) >= 4  # the ends are printed


@pytest.mark.parametrize("labelled", [1.0, 0.5])
def test_risk_plot_is_a_probability_axis(labelled):
    """Every draw labelled gives a curve of exact zeros: the axis stays [floor, 1] (it once ran
    from 1e-314 to 1e14) and the zero estimates are drawn on the floor, said to be 0."""
    import matplotlib.pyplot as plt

    from vortex_data.stats import report

    b = list(range(1, 65))
    risk = {"curve": {"batch_sizes": b, "closed_form_iid": [(1 - labelled) ** n for n in b]}, "batch_size": 8,
            "simulated_iid": (1 - labelled) ** 8, "simulated_quota": 0.0, "plan_labelless": 0.0,
            "batching": "stratified"}
    fig, ax = plt.subplots()
    report._risk({"mixture": {"label_risk": risk}})(ax)
    assert ax.get_ylim() == pytest.approx((report.RISK_FLOOR, 1.0))
    points = [c.get_offsets()[0] for c in ax.collections]
    assert all(report.RISK_FLOOR <= y <= 1 for _, y in points)
    zero_labels = [t.get_text() for t in ax.get_legend().get_texts() if "= 0" in t.get_text()]
    assert len(zero_labels) == (3 if labelled == 1.0 else 2)
    plt.close(fig)


def test_scene_leakage_pairs_every_dataset_with_its_own_evaluation_manifests(tmp_path, capsys):
    """A DIODE train manifest sharing a scan's scene with DIODE val is flagged, by exact name (no NYU
    room rule: scene_00020a is not scene_00020); a TUM pair with disjoint sequences is not;
    datasets of different families are never paired."""
    from vortex_data.stats.compute import plan_units
    from vortex_data.stats.leakage import scene_leakage

    from loader_data import build

    paths = [build(tmp_path, "diode", 6, 6, with_seg=False, scenes=["scene_00019"] * 3 + ["scene_00020"] * 3),
             build(tmp_path, "diode", 4, 4, with_seg=False, split="val",
                   scenes=["scene_00020", "scene_00020a", "scene_00021", "scene_00020"]),
             build(tmp_path, "tum", 2, 2, with_seg=False, scenes=["fr1_desk"] * 2),
             build(tmp_path, "tum", 2, 2, with_seg=False, split="test", scenes=["fr1_room"] * 2)]
    got = {x["pair"]: x for x in scene_leakage(plan_units(paths, None))}
    assert got == {"diode-train/diode-val": {"pair": "diode-train/diode-val", "frames": 4, "leaked_frames": 2,
                                             "shared_places": 1, "unknown_because": None},
                   "tum-train/tum-test": {"pair": "tum-train/tum-test", "frames": 2, "leaked_frames": 0,
                                          "shared_places": 0, "unknown_because": None}}
    assert main(["stats", *map(str, paths[:2]), "--out", str(tmp_path / "r"), "--workers", "1",
                 "--no-progress"]) == 0
    assert "scene leakage diode-train/diode-val: 2 of 4 evaluation frames" in capsys.readouterr().out
    assert json.loads((tmp_path / "r/stats.json").read_text())["scene_leakage"][0]["leaked_frames"] == 2
