"""`vortex-data` command line: thin wrappers over the library."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from . import __version__
from .convert import CONVERTERS, get_converter
from .cpus import usable_cpus
from .errors import EXIT_INTERRUPTED, InputError, Interrupted, VortexError

# Subcommands defined beside the code they run: name -> (module, function registering its parser,
# one-line help). The help is written here only: `vortex-data --help` lists it without importing the module,
# and the module's parser receives it. A module is imported only when its command is used, so converting shards does
# not pay for importing torch.
PLUGINS = {
    "stats": ("vortex_data.stats.compute", "add_parser",
              "depth/label/RGB statistics, label-less-batch risk and cross-source duplicates -> HTML + JSON"),
    "bench-loader": ("vortex_data.bench.loader", "add_parser", "measure loader throughput against its baselines"),
    "train": ("vortex_data.train.commands", "add_train_parser",
              "train EfficientViT-B1 depth + segmentation (resumes automatically; [train] extra)"),
    "eval": ("vortex_data.train.commands", "add_eval_parser", "evaluate a training checkpoint per dataset"),
    "show": ("vortex_data.show", "add_parser",
             "contact sheet of training batches as the trainer receives them (PNG)"),
    "export": ("vortex_data.export_rerun", "add_parser",
               "write samples in another tool's format (rerun: a .rrd recording; [viz] extra)"),
    "preflight": ("vortex_data.preflight", "add_parser",
                  "before a training job: CPUs, loader rate, label-less batches, scene leakage, walltime -> GO/NO-GO"),
}

EPILOG_BUILD = ("Each dataset has its own options: run `vortex-data build-shards --dataset NAME --help` to see them. "
                "Datasets: " + ", ".join(sorted(CONVERTERS)) + ".")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _size(text: str) -> int:
    from .stream.shard_cache import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as e:  # argparse then prints the message itself, naming the option
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_build_parser(sub: argparse._SubParsersAction, dataset: str | None) -> None:
    p = sub.add_parser("build-shards", help="convert a dataset in its native layout into WebDataset shards + manifests",
                       description="Convert one dataset into verified WebDataset shards and a manifest per split. "
                                   "Parallel, deterministic (byte-identical reruns), atomic and resumable: rerun the "
                                   "same command after a crash to finish the missing shards.",
                       epilog=EPILOG_BUILD)
    p.add_argument("--dataset", required=True, choices=sorted(CONVERTERS), help="which converter to run")
    p.add_argument("--src", required=True, type=Path, help="the dataset in its native layout (folder or file)")
    p.add_argument("--out", type=Path, default=Path("shards"), help="shard root (default: shards/)")
    p.add_argument("--manifests", type=Path, default=Path("manifests"), help="manifest folder (default: manifests/)")
    p.add_argument("--split", default="all", help="split to convert, or 'all' (default)")
    p.add_argument("--workers", type=int, default=usable_cpus(),
                   help="worker processes (default: the CPUs this process may use, e.g. its SLURM allocation)")
    p.add_argument("--shard-samples", type=int, default=256, help="max samples per shard (default 256)")
    p.add_argument("--shard-bytes", type=_size, default=512 * 2**20, help="max bytes per shard, e.g. 512M (default)")
    p.add_argument("--rgb-codec", choices=["jpg", "png"], default="jpg", help="jpg (default) or lossless png")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--depth-codec", choices=["zst", "png"], default="zst",
                   help="lossless codec for depth and labels: zst (zstd over raw uint16, default; fastest decode) "
                        "or png (16-bit PNG)")
    p.add_argument("--resize", type=int, default=None, metavar="SHORT_SIDE",
                   help="resize so the shorter side is this many pixels (RGB area/linear, depth/labels centre-aligned "
                        "nearest, intrinsics follow; see docs/format.md)")
    p.add_argument("--num-tasks", type=int, default=_env_int("SLURM_ARRAY_TASK_COUNT", 1),
                   help="split the build into this many disjoint parts (default: $SLURM_ARRAY_TASK_COUNT or 1)")
    p.add_argument("--task-index", type=int, default=_env_int("SLURM_ARRAY_TASK_ID", 0) - _env_int("SLURM_ARRAY_TASK_MIN", 0),
                   help="which part this process builds (default: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN, or 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if dataset in CONVERTERS:
        cls = get_converter(dataset)
        cls.add_arguments(p.add_argument_group(f"{dataset} options", cls.description))
    p.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    from .format.schema import EncodeOptions
    from .convert.shards import BuildConfig, build_shards
    from .inspect import format_summary, manifest_summary

    converter = get_converter(args.dataset).from_args(args.src, args)
    cfg = BuildConfig(
        out_dir=args.out, manifest_dir=args.manifests,
        splits=None if args.split == "all" else frozenset(args.split.split(",")),
        shard_samples=args.shard_samples, shard_bytes=args.shard_bytes,
        encode=EncodeOptions(rgb_codec=args.rgb_codec, jpeg_quality=args.jpeg_quality, array_codec=args.depth_codec),
        resize=args.resize, workers=args.workers, num_tasks=args.num_tasks, task_index=args.task_index,
        progress=not args.no_progress,
    )
    result = build_shards(converter, cfg)
    print(f"built {result.groups_built} shard groups, kept {result.groups_reused} verified groups from an earlier run")
    for m in result.manifests:
        print(format_summary(manifest_summary(m)))
        print()
    if cfg.num_tasks > 1:
        print(f"part {cfg.task_index + 1} of {cfg.num_tasks} done; when all parts are done run "
              f"`vortex-data merge-manifests {args.manifests}/{args.dataset}-SPLIT.part-*.json`")
    return 0


def cmd_inspect_manifest(args: argparse.Namespace) -> int:
    from .inspect import format_summary, manifest_summary
    s = manifest_summary(args.path)
    print(json.dumps(s, indent=1) if args.json else format_summary(s))
    return 0


def cmd_inspect_shard(args: argparse.Namespace) -> int:
    from .inspect import dump_sample, shard_listing
    if args.dump:
        for p in dump_sample(args.path, args.dump, args.to):
            print(p)
        return 0
    rows = shard_listing(args.path)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            fields = " ".join(f"{k}:{v}" for k, v in r["fields"].items())
            print(f"{r['key']}  {r['size']}  seg={'yes' if r['has_seg'] else 'no'}  {fields}")
        print(f"{len(rows)} samples in {args.path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify
    from .format.manifest import is_remote

    bad = 0
    for path in args.manifests:
        if is_remote(path):
            raise InputError(f"{path}: verify reads a local manifest and its index (download them first); shards "
                             "the manifest lists as http(s):// or pipe: URLs are fetched and checked")
        path = Path(path)
        rep = verify(path, decode=not args.no_decode, progress=not args.no_progress)
        print(f"{path}: {'OK' if rep.ok else 'FAILED'} ({rep.shards_checked} shards, {rep.samples_checked} samples)")
        for p in rep.problems:
            print(f"  {p}")
        bad += not rep.ok
    return 1 if bad else 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from .verify import reindex

    for path in args.manifests:
        n = reindex(Path(path))
        print(f"{path}: index rewritten ({n} rows, member checksums and offsets read from shards that match the manifest)")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .format.manifest import merge
    out = merge(args.parts, args.out_dir)
    print(f"merged {len(args.parts)} parts into {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    run_demo(args.out, workers=args.workers)
    return 0


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vortex-data",
        description="Depth datasets -> verified WebDataset shards -> a streaming mixture loader. "
                    "Start with `vortex-data demo`.")
    parser.add_argument("--version", action="version", version=f"vortex-data {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset")
    dataset = pre.parse_known_args(argv)[0].dataset
    _add_build_parser(sub, dataset)

    ins = sub.add_parser("inspect", help="summarise a manifest or list/dump a shard")
    isub = ins.add_subparsers(dest="what", required=True, metavar="WHAT")
    im = isub.add_parser("manifest", help="readable summary of a manifest (counts, rejections, depth ranges)")
    im.add_argument("path", type=Path)
    im.add_argument("--json", action="store_true", help="machine-readable JSON")
    im.set_defaults(func=cmd_inspect_manifest)
    ish = isub.add_parser("shard", help="list the samples of a shard, or dump one to image files")
    ish.add_argument("path", type=Path)
    ish.add_argument("--json", action="store_true", help="machine-readable JSON listing")
    ish.add_argument("--dump", metavar="KEY", help="write this sample's RGB, colourised depth, labels and metadata")
    ish.add_argument("--to", type=Path, default=Path("."), help="folder for --dump (default: .)")
    ish.set_defaults(func=cmd_inspect_shard)

    ver = sub.add_parser("verify", help="check shard and member checksums and the key grammar, decode every sample; "
                                       "exit 1 naming any bad one")
    ver.add_argument("manifests", nargs="+", help="local manifest files (their shards may be http(s):// URLs)")
    ver.add_argument("--no-decode", action="store_true", help="checksums and counts only")
    ver.add_argument("--no-progress", action="store_true")
    ver.set_defaults(func=cmd_verify)

    rei = sub.add_parser("reindex", help="upgrade an older build's index in place (member checksums, offsets, "
                                         "dataset and split columns) from shards that match the manifest's sha256")
    rei.add_argument("manifests", nargs="+", type=Path, help="local manifest files")
    rei.set_defaults(func=cmd_reindex)

    mer = sub.add_parser("merge-manifests", help="join the part manifests of a SLURM array build")
    mer.add_argument("parts", type=Path, nargs="+", help="<dataset>-<split>.part-*-of-*.json files (all parts)")
    mer.add_argument("--out-dir", type=Path, default=None, help="where to write the merged manifest (default: beside the parts)")
    mer.set_defaults(func=cmd_merge)

    demo = sub.add_parser("demo", help="generate small sources in their native formats, build, inspect and verify")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out/; replaced)")
    demo.add_argument("--workers", type=int, default=2)
    demo.set_defaults(func=cmd_demo)

    command = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, register, help_text) in PLUGINS.items():
        if name == command:
            getattr(importlib.import_module(module), register)(sub, help=help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), "")
    try:
        args = build_parser(argv).parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
        return code
    except Interrupted as e:  # the command says what it kept and what a rerun does
        print(f"vortex-data {command}: interrupted: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"vortex-data {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # another pipe (a pipe: shard's command): a real error
        # The reader of our output left (`... | head -1`): what it read is what it wanted. Point
        # stdout at /dev/null so the interpreter's final flush does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (VortexError, OSError) as e:
        # The package's own errors and the system's (a missing file, a full disk) name the file and
        # the problem; a traceback would hide them. Anything else is a bug and keeps its traceback.
        print(f"vortex-data {command}: error: {e}", file=sys.stderr)
        return 2


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports POLLERR)."""
    import select

    try:
        p = select.poll()
        p.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in p.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


if __name__ == "__main__":
    raise SystemExit(main())
