"""Render stats.json content as one self-contained HTML page (plots as base64 PNG, no network)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import gallery  # noqa: E402

PLOT_TITLES = (
    "Frames per source",
    "Depth distribution (valid pixels)",
    "Valid-depth fraction per frame",
    "Normalised focal length fx / width",
    "Class pixel frequency",
    "Risk of a batch without labels",
)


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(title: str, draw: Callable[[plt.Axes], None]) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    draw(ax)
    ax.set_title(title)
    return f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{_png(fig)}"><figcaption>{html.escape(title)}</figcaption></figure>'


def _frames(s: dict[str, Any]) -> Callable[[plt.Axes], None]:
    def draw(ax: plt.Axes) -> None:
        names = [x["name"] for x in s["sources"]]
        ax.barh(names, [x["frames"] for x in s["sources"]], color="tab:blue", label="all frames")
        ax.barh(names, [x["frames"] * x["labelled_fraction"] for x in s["sources"]], color="tab:orange",
                label="with labels")
        ax.set_xlabel("frames")
        ax.legend()
    return draw


def _depth(s: dict[str, Any]) -> Callable[[plt.Axes], None]:
    def draw(ax: plt.Axes) -> None:
        for src in s["sources"] + [dict(s["mixture"], name="mixture")]:
            e = np.asarray(src["depth_hist"]["edges_m"])
            c = np.asarray(src["depth_hist"]["counts"], np.float64)
            if c.sum() == 0:
                continue
            ax.stairs(c / c.sum(), e, label=src["name"], lw=2.2 if src["name"] == "mixture" else 1.2)
        ax.set_xscale("log")
        ax.set_xlim(0.1, 70)
        ax.set_xlabel("depth (m, log scale)")
        ax.set_ylabel("share of valid pixels per bin")
        ax.legend(fontsize=8)
    return draw


def _valid(s: dict[str, Any]) -> Callable[[plt.Axes], None]:
    def draw(ax: plt.Axes) -> None:
        for src in s["sources"]:
            e = np.asarray(src["valid_fraction"]["edges"])
            c = np.asarray(src["valid_fraction"]["counts"], np.float64)
            ax.stairs(c / max(c.sum(), 1), e, label=src["name"])
        ax.set_xlabel("fraction of pixels with valid depth")
        ax.set_ylabel("share of frames")
        ax.legend(fontsize=8)
    return draw


def _focal(s: dict[str, Any]) -> Callable[[plt.Axes], None]:
    def draw(ax: plt.Axes) -> None:
        for i, src in enumerate(s["sources"]):
            v, c = src["fx_over_width"]["values"], src["fx_over_width"]["counts"]
            ax.scatter(v, [i] * len(v), s=20 + 180 * np.sqrt(np.asarray(c) / max(max(c, default=1), 1)))
        ax.set_yticks(range(len(s["sources"])), [x["name"] for x in s["sources"]])
        ax.set_xlabel("fx / image width (dimensionless; horizontal FOV = 2 atan(0.5 / value))")
    return draw


def _classes(s: dict[str, Any]) -> Callable[[plt.Axes], None]:
    def draw(ax: plt.Axes) -> None:
        rows = [x for x in s["sources"] if sum(x["class_pixels"])] + [dict(s["mixture"], name="mixture")]
        width = 0.8 / max(len(rows), 1)
        x = np.arange(len(s["class_names"]))
        for i, r in enumerate(rows):
            ax.bar(x + i * width, r["class_frequency"], width, label=r["name"])
        ax.set_xticks(x + 0.4 - width / 2, s["class_names"])
        ax.set_ylabel("share of labelled pixels")
        ax.legend(fontsize=8)
    return draw


RISK_FLOOR = 1e-12
"""The label-risk plot's lowest probability: one batch in a trillion is never, in any run. Its
axis spans [RISK_FLOOR, 1]; the curve below it is not drawn and an estimate of exactly 0 is
marked on the floor as "= 0"."""


def _risk(s: dict[str, Any]) -> Callable[[plt.Axes], None]:
    def draw(ax: plt.Axes) -> None:
        r = s["mixture"]["label_risk"]
        b, curve = np.asarray(r["curve"]["batch_sizes"]), np.asarray(r["curve"]["closed_form_iid"], np.float64)
        ax.plot(b, np.where(curve >= RISK_FLOOR, curve, np.nan), label="closed form (1 - p)^B, independent draws")
        points = [(r["simulated_iid"], "tab:orange", "o", "simulated, independent draws")]
        if r["simulated_quota"] is not None:
            points.append((r["simulated_quota"], "tab:green", "x", "simulated, exact epoch quotas"))
        if r.get("plan_labelless") is not None:
            points.append((r["plan_labelless"], "tab:red", "D", f"the loader's plans, batching={r['batching']}"))
        for value, colour, marker, what in points:
            zero = value < RISK_FLOOR
            ax.scatter([r["batch_size"]], [max(value, RISK_FLOOR)], color=colour, marker=marker, zorder=3,
                       clip_on=False, label=f"{what} (B={r['batch_size']})" + (": = 0, on the floor" if zero else ""))
        ax.set_yscale("log")
        ax.set_ylim(RISK_FLOOR, 1)
        ax.set_xlim(b.min() - 0.5, b.max() + 0.5)
        ax.set_xlabel("batch size B (samples)")
        ax.set_ylabel(f"P(no labelled sample in batch)\n(floor {RISK_FLOOR:g})")
        ax.legend(fontsize=8)
    return draw


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _f(v: Any, fmt: str = ".3g") -> str:
    return "-" if v is None else format(v, fmt)


def _tables(s: dict[str, Any]) -> str:
    src = s["sources"]
    mix = s["mixture"]
    out = ["<h2>Sources</h2>", _table(
        ["source", "dataset", "split", "frames", "resolutions (WxH: frames)", "fx/width median [min, max]",
         "horizontal FOV (deg, median)", "frames with labels", "valid depth, median frame"],
        [[x["name"], x["dataset"], x["split"], x["frames"],
          ", ".join(f"{k}: {v}" for k, v in x["resolutions"].items()),
          f"{_f(x['fx_over_width']['median'])} [{_f(x['fx_over_width']['min'])}, {_f(x['fx_over_width']['max'])}]",
          _f(x["hfov_deg"]["median"], ".1f"), f"{x['labelled_fraction']:.1%}", _f(x["valid_fraction"]["median"], ".1%")]
         for x in src])]
    pct = list(mix["depth_percentiles_m"])
    out += ["<h2>Depth percentiles (m)</h2>",
            "<p>Exact over all valid pixels: computed from a histogram with one bin per stored millimetre "
            "(the storage resolution), so the only error is the 1 mm quantisation of the data itself.</p>",
            _table(["source", *pct], [[x["name"], *(_f(x["depth_percentiles_m"][p], ".3f") for p in pct)]
                                      for x in src + [dict(mix, name="mixture")]])]
    out += ["<h2>RGB normalisation</h2>",
            "<p>Mean and standard deviation per channel over every pixel, from exact integer sums. "
            "Values in [0, 1] units are what a normalisation transform after /255 expects.</p>",
            _table(["source", "mean R,G,B (0-1)", "std R,G,B (0-1)"],
                   [[x["name"], ", ".join(f"{v:.4f}" for v in x["rgb_mean_01"]),
                     ", ".join(f"{v:.4f}" for v in x["rgb_std_01"])] for x in src + [dict(mix, name="mixture")]])]
    names = s["class_names"]
    out += ["<h2>Classes</h2>",
            "<p>Frequency = share of labelled (non-ignore) pixels. Suggested loss weights by median-frequency "
            "balancing (Eigen &amp; Fergus, ICCV 2015): w_c = median(f) / f_c with f_c = pixels of class c / "
            "labelled pixels of the images containing c; 0 for a class never seen.</p>",
            _table(["source", "labelled frames", *(f"{n} freq / weight" for n in names)],
                   [[x["name"], f"{x['labelled_fraction']:.1%}",
                     *(f"{f:.3f} / {w:.2f}" for f, w in zip(x["class_frequency"], x["class_weights"]))]
                    for x in src + [dict(mix, name="mixture")]])]
    r = mix["label_risk"]
    out += ["<h2>Mixture and label-less batches</h2>",
            f"<p>Mixture: {html.escape(mix['name'])} ({html.escape(mix['weight_rule'])}).</p>",
            _table(["source", "weight"], [[x["name"], f"{x['weight']:.3f}"] for x in mix["sources"]]),
            f"<p>One draw is labelled with probability p = sum_s w_s x (labelled fraction of s) = "
            f"{r['p_labelled_draw']:.4f}. For a batch of B = {r['batch_size']}:</p>",
            _table(["estimate", "P(no labelled sample in the batch)"], [
                ["closed form, independent draws: (1 - p)^B", f"{r['closed_form_iid']:.4g}"],
                [f"simulated, independent draws ({r['simulated_iid_batches']} batches)",
                 f"{r['simulated_iid']:.4g} ± {r['simulated_iid_stderr']:.2g} (1 s.e.)"],
                [f"closed form, exact quotas (hypergeometric, epoch of {r['epoch_size']})",
                 r.get("quota_note") or f"{r['closed_form_quota']:.4g}"],
                [f"simulated, exact quotas ({r['simulated_quota_epochs']} shuffled epochs)",
                 r.get("quota_note") or f"{r['simulated_quota']:.4g}"],
                [f"the loader's own plans, batching = {r['batching']} ({r['plan_epochs']} epochs)",
                 "no full batch" if r["plan_labelless"] is None else
                 f"{r['plan_labelless']:.4g}" + (" (0 by construction)" if r["by_construction"] else "")]]),
            "<p>Exact per-epoch quotas draw without replacement, so labelled samples are spread a little more "
            "evenly than independent draws and the risk is slightly lower than (1 - p)^B. Stratified batching "
            "gives every batch each source's share exactly: with fully labelled sources whose share is at least "
            "1/B, no batch lacks a labelled sample.</p>"]
    if mix.get("repeats_warning"):
        out.append(f"<p><b>Warning:</b> {html.escape(mix['repeats_warning'])}.</p>")
    d = s["duplicates"]
    pairs = d["pairs"]
    out += ["<h2>Near-duplicate frames across sources</h2>",
            f"<p>64-bit DCT perceptual hashes of a centre window, matched against a grid of shifted and scaled "
            f"windows of the other frame; a pair is listed when at most {d['threshold_bits']} of 64 bits differ. "
            f"Catches re-encoded, resized and border-cropped copies (e.g. NYU frames inside SUN RGB-D); "
            f"not flips, rotations or large off-centre crops. Frames hashed: "
            f"{html.escape(', '.join(f'{k}: {v}' for k, v in d['compared'].items()))}. "
            f"<b>{d.get('pairs_found', len(pairs))} pair(s)</b> found"
            + (f" (stats.json keeps the closest {len(pairs)})" if d.get("pairs_found", 0) > len(pairs) else "")
            + ".</p>",
            _table(["source A", "key A", "source B", "key B", "differing bits"],
                   [[p["source_a"], p["key_a"], p["source_b"], p["key_b"], p["hamming_bits"]] for p in pairs[:500]])]
    if len(pairs) > 500:
        out.append(f"<p>... and {len(pairs) - 500} more in stats.json.</p>")
    if s.get("scene_leakage"):
        out += ["<h2>Scene leakage</h2>",
                "<p>Evaluation frames (val/test/eval manifests) whose scene is also in a training manifest of "
                "the same dataset, from the indexes' scene column; NYU's datasets are matched by room, so "
                "captures of one room (kitchen_0028a/b) count as one.</p>",
                _table(["training / evaluation", "evaluation frames", "of scenes also trained on", "scenes"],
                       [[x["pair"], _f(x["frames"], "d"), "unknown: " + str(x["unknown_because"])
                         if x["leaked_frames"] is None else x["leaked_frames"], _f(x["shared_places"], "d")]
                        for x in s["scene_leakage"]])]
    return "\n".join(out)


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 6px;"
        "font-size:13px;text-align:left}th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}"
        ".frame{margin:.6em 0}.cap{font-size:12px;margin:.2em 0;color:#444}"
        ".sw{display:inline-block;width:12px;height:12px;margin:0 4px 0 10px;vertical-align:middle}")


def render_html(s: dict[str, Any]) -> str:
    """The whole report as one HTML string; every plot is titled with an entry of PLOT_TITLES."""
    draws = [_frames(s), _depth(s), _valid(s), _focal(s), _classes(s), _risk(s)]
    figures = "\n".join(_figure(t, d) for t, d in zip(PLOT_TITLES, draws))
    # The gallery reads its few frames back from the shards that stats.json names.
    frames = gallery.render(s["gallery"], s["sources"]) if s.get("gallery") else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>vortex-data stats</title>"
            f"<style>{_CSS}</style></head><body>\n<h1>Dataset statistics</h1>\n"
            "<p>Generated by <code>vortex-data stats</code>. Depth is in metres; depth and RGB numbers come from "
            "every pixel of every frame, the rest from the manifests' Parquet index. See docs/stats.md.</p>\n"
            f"{_tables(s)}\n<h2>Plots</h2>\n{figures}\n{frames}\n</body></html>\n")
