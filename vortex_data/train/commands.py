"""argparse wiring for ``vortex-data train`` and ``vortex-data eval`` (and ``python -m vortex_data.train``)."""

from __future__ import annotations

import argparse
from typing import Any
import sys
from pathlib import Path

from vortex_data.errors import EXIT_INTERRUPTED, VortexError
from vortex_data.train.config import COMPILE_MODES, FIELDS, build_config, load_recipe
from vortex_data.train.protocol import PROTOCOLS

# CLI flag -> TrainConfig field, for the settings worth overriding without editing a recipe.
_OVERRIDES = {
    "run_dir": str, "mixture": str, "augment": str, "manifest": str, "loader": str, "steps": int,
    "steps_per_epoch": int, "batch_size": int, "num_workers": int, "seed": int, "encoder_weights": str,
    "lr_encoder": float, "lr_heads": float, "warmup_steps": int, "amp": str, "ckpt_every": int,
    "time_limit_s": float, "stop_margin_s": float, "stop_file": str, "profile_steps": int, "log_every": int,
    "init_from": str, "on_error": str, "decode": str, "compile": str, "min_gpu_util": float,
}
assert set(_OVERRIDES) <= FIELDS


def add_train_parser(subparsers: argparse._SubParsersAction, **kw: Any) -> argparse.ArgumentParser:
    """Register ``train``; rerunning the same command resumes from the stage's latest checkpoint."""
    p = subparsers.add_parser("train", **kw,
                              description="Exit code 0: finished (STATUS 'done'); 75: stopped early with a checkpoint "
                                          "(STATUS 'interrupted <reason>': requeue and rerun); anything else: failed "
                                          "(STATUS 'failed <reason>': do not requeue).")
    p.add_argument("--recipe", default="v6", help="shipped recipe name or TOML path ('none' for defaults only)")
    p.add_argument("--stage", type=int, choices=(1, 2), default=None,
                   help="run one stage; default: stage 1 then stage 2 (which starts from the final weights of a finished "
                        "stage 1, or from --init-from CKPT)")
    p.add_argument("--manifests", "--shards", dest="manifests_dir", metavar="DIR",
                   help="folder with the converted datasets' manifests (<dataset>-<split>.json); default manifests/")
    p.add_argument("--time-limit", dest="time_limit_s", type=float,
                   help="seconds of training before a clean stop; must exceed the stop margin (stop_margin_s)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="override the recipe's image_size")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--mixture", help="train on this mixture (file or shipped name) instead of the recipe's data")
    data.add_argument("--manifest", help="train on this one manifest instead of the recipe's mixture (the recipe's "
                                         "other settings still apply)")
    for name, typ in _OVERRIDES.items():
        flag = "--" + name.replace("_", "-")
        if name not in ("time_limit_s", "on_error", "decode", "mixture", "manifest", "compile", "min_gpu_util"):
            p.add_argument(flag, dest=name, type=typ, help=f"override the recipe's {name}")
    p.add_argument("--on-error", dest="on_error", choices=("raise", "skip"),
                   help="a sample failing its checksum or decode: raise (default: stop naming shard, key, member) "
                        "or skip (replace it from the same source deterministically, log it, count it per epoch)")
    p.add_argument("--decode", dest="decode", choices=("cpu", "device"),
                   help="where RGB JPEGs are decoded: cpu (the loader workers; default) or device (torchvision on the GPU)")
    p.add_argument("--compile", dest="compile", choices=COMPILE_MODES,
                   help="torch.compile the model and loss: auto (the recipe's default: 'default' on CUDA, none "
                        "elsewhere), none (eager), default, max-autotune (longer compile, tuned kernels) or "
                        "reduce-overhead (CUDA graphs)")
    p.add_argument("--min-gpu-util", dest="min_gpu_util", type=float, metavar="PERCENT",
                   help="warn at the start when the profile predicts GPU utilisation (NVML, as the scheduler "
                        "sees it) below PERCENT, naming the lever (workers, decode, compile, batch size)")
    p.set_defaults(func=run_train)
    return p


def add_eval_parser(subparsers: argparse._SubParsersAction, **kw: Any) -> argparse.ArgumentParser:
    """Register ``eval``: per-dataset depth metrics and mIoU of a checkpoint."""
    p = subparsers.add_parser("eval", **kw)
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="a train.pt or step directory (verified against its checksums.json), or a stage's "
                        "checkpoints/ folder or the stage folder (its newest complete checkpoint)")
    p.add_argument("--manifest", help="dataset manifest handed to the loader; a {split} in it is replaced by --split")
    p.add_argument("--loader", default="stream", help="loader factory: stream, synthetic or module:function")
    p.add_argument("--split", help="replaces {split} in --manifest (default: test where the NYU protocol finds "
                                   "that manifest, else val)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="auto",
                   help="nyu: the published NYU protocol (official 654-frame test split, predictions upsampled "
                        "to 480x640 and scored against full-resolution ground truth, Eigen crop, 1e-3..10 m); "
                        "plain: scored at the evaluation size; auto (default): nyu for an NYU manifest, else plain")
    p.add_argument("--batch-size", type=int, default=8, help="default 8")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="network input size (nyu) or evaluation size (plain); default: the checkpoint's training "
                        "image_size")
    p.add_argument("--eigen-crop", action="store_true", help="plain protocol: score inside the Eigen crop too "
                                                             "(the nyu protocol always does)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.set_defaults(func=run_eval)
    return p


def run_train(args: argparse.Namespace) -> int:
    from vortex_data.train.data import resolve_factory
    from vortex_data.train.loop import run_stage

    recipe = load_recipe(args.recipe)
    overrides = {name: getattr(args, name, None) for name in _OVERRIDES}
    overrides["manifests_dir"] = args.manifests_dir
    if args.image_size:
        overrides["image_size"] = tuple(args.image_size)
    # Without --stage, both stages run in order; a rerun after a stop resumes whichever stage was
    # interrupted (a finished stage returns at once from its last checkpoint).
    stages = [args.stage] if args.stage else [1, 2] if recipe and "stage2" in recipe else [1]
    for stage in stages:
        cfg = build_config(recipe, stage, overrides, recipe_name=args.recipe)
        code = run_stage(cfg, resolve_factory(cfg.loader))
        if code != 0:
            return code
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import json

    from vortex_data.train.data import resolve_factory
    from vortex_data.train.evaluate import format_table, run_evaluation

    ckpt = args.checkpoint  # which file, verified how: checkpoint.for_reading (in load_network)
    from dataclasses import asdict

    from vortex_data.train.protocol import resolve_split

    split = resolve_split(args.manifest, args.split, args.protocol)
    proto, results = run_evaluation(ckpt, args.manifest, resolve_factory(args.loader), args.batch_size, split,
                                    tuple(args.image_size) if args.image_size else None, args.eigen_crop,
                                    args.protocol, announce=lambda line: print(line, flush=True))
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps({"protocol": asdict(proto), "results": results}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vortex_data.train")
    sub = parser.add_subparsers(dest="command")
    add_train_parser(sub)
    add_eval_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "eval", "-h", "--help"):
        argv.insert(0, "train")  # `python -m vortex_data.train --stage 1 ...` means train
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # before or after a stage (run_stage reports its own): one line, as `vortex-data`
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (VortexError, OSError) as e:
        # As `vortex-data`: the message names the file or setting and the problem; STATUS has it too.
        # Other errors (torch runtime, a lost peer, a bug) keep their traceback.
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 2
