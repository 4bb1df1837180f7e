"""Training configuration: defaults, shipped TOML recipes, per-stage sections, CLI overrides."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..recipes import recipe_path


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    stage: int = 1
    mixture: str | None = "stage1"
    augment: str | None = "default"
    manifest: str | None = None
    manifests_dir: str | None = None
    """Folder holding the converted datasets' manifests (<dataset>-<split>.json); default manifests/."""
    loader: str = "stream"
    steps: int = 1000
    steps_per_epoch: int = 500
    batch_size: int = 8
    image_size: tuple[int, int] = (384, 512)
    num_workers: int = 4
    decode: str = "cpu"
    """Where the training loader decodes RGB JPEGs: 'cpu' (its workers) or 'device' (``finish`` on the GPU)."""
    on_error: str = "raise"
    """A sample failing its read-time integrity check: 'raise' or 'skip' (replace, count, log)."""
    seed: int = 0
    max_depth: float = 10.0
    decoder_width: int = 64
    encoder_weights: str | None = None
    lr_encoder: float = 3e-5
    lr_heads: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    smooth_weight: float = 1e-3
    amp: str = "bf16"
    channels_last: bool = True
    compile: str = "auto"
    """torch.compile of the model and loss: 'none', 'default', 'max-autotune', 'reduce-overhead'
    (CUDA graphs), or 'auto': 'default' on CUDA, 'none' elsewhere (see docs/train.md)."""
    compile_backend: str = "inductor"
    """torch.compile's backend. 'inductor' generates kernels; 'aot_eager' traces forward and backward
    exactly as inductor would see them but runs them eagerly (no C++/Triton build: the CPU tests)."""
    min_gpu_util: float | None = None
    """Percent; when the start-of-run profile predicts NVML GPU utilisation below it, warn and name the levers."""
    ckpt_every: int = 1000
    keep_checkpoints: int = 2
    time_limit_s: float | None = None
    stop_margin_s: float = 60.0
    stop_file: str | None = None
    profile_steps: int = 20
    starve_threshold: float = 0.1
    log_every: int = 10
    init_from: str | None = None
    init_from_stage: int | None = None
    eval_min_depth: float = 1e-3
    eval_max_depth: float = 10.0

    @property
    def stage_dir(self) -> Path:
        return Path(self.run_dir) / f"stage{self.stage}"

    @property
    def ckpt_dir(self) -> Path:
        return self.stage_dir / "checkpoints"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELDS = {f.name for f in fields(TrainConfig)}

COMPILE_MODES = ("auto", "none", "default", "max-autotune", "reduce-overhead")
"""``compile`` values; see :func:`vortex_data.train.compiled.resolve_mode`."""


def load_recipe(name_or_path: str) -> dict[str, Any] | None:
    """A shipped recipe by name ('v6') or a TOML file path, parsed; ``"none"``: no recipe (None),
    the command-line settings alone."""
    from vortex_data._toml import tomllib

    if name_or_path == "none":
        return None

    path = Path(name_or_path)
    if not path.is_file():
        path = recipe_path(name_or_path)  # a shipped one, or RecipeError listing them
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a valid TOML recipe ({e})") from None


def build_config(recipe: dict[str, Any] | None, stage: int, overrides: dict[str, Any],
                 recipe_name: str = "recipe") -> TrainConfig:
    """[common] then [stageN] then non-None overrides; unknown keys are an error, not silently dropped.
    ``recipe_name`` (the recipe's name or path) is what error messages call the recipe.

    ``mixture`` and ``manifest`` name the training data two ways: a layer that sets one clears the
    other from the layers below (``--manifest X`` trains on X whatever mixture the recipe names);
    one layer setting both is an error."""
    values: dict[str, Any] = {"stage": stage}
    layers = [(f"{recipe_name}: ", f" in [{s}]", recipe.get(s, {})) for s in ("common", f"stage{stage}")] if recipe else []
    layers.append(("", " given as overrides", {k: v for k, v in overrides.items() if v is not None}))
    for where, section, layer in layers:
        unknown = set(layer) - FIELDS
        if unknown:
            raise InputError(f"{where}unknown training settings{section}: {sorted(unknown)}")
        if layer.get("mixture") is not None and layer.get("manifest") is not None:
            raise InputError(f"{where}both mixture ({layer['mixture']}) and manifest ({layer['manifest']}) "
                             f"set{section}; name the training data one way (--mixture or --manifest)")
        for name, value in layer.items():
            check_type(name, value, f"{where}[{section.strip()[4:-1]}] " if where else "")
        for name, other in (("mixture", "manifest"), ("manifest", "mixture")):
            if layer.get(name) is not None:
                values[other] = None
        values.update(layer)
    if values.get("compile", "auto") not in COMPILE_MODES:
        raise InputError(f"compile = {values['compile']!r}: must be one of {', '.join(COMPILE_MODES)}")
    if "image_size" in values:
        values["image_size"] = tuple(int(v) for v in values["image_size"])
    return TrainConfig(**values)


_KINDS = {"int": (int, "an integer"), "float": ((int, float), "a number"), "str": (str, "a string"),
          "bool": (bool, "true or false")}


def check_type(name: str, value: Any, where: str) -> None:
    """InputError naming the setting (``where`` says the recipe and section) when ``value`` does not
    have the setting's type: a recipe's ``steps = "ten"`` fails here, not deep inside training."""
    kinds = [k.strip() for k in FIELD_TYPES[name].split("|")]
    if value is None and "None" in kinds or any(k not in _KINDS and k != "None" and not k.startswith("tuple[")
                                                for k in kinds):
        return  # (a type this check does not know is left to the code that uses it)
    for kind in kinds:
        if kind.startswith("tuple["):  # image_size: (H, W)
            if isinstance(value, (list, tuple)) and len(value) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                return
        elif kind in _KINDS and isinstance(value, _KINDS[kind][0]) and (kind == "bool" or not isinstance(value, bool)):
            return
    wanted = " or ".join("[height, width]" if k.startswith("tuple[") else _KINDS.get(k, (None, k))[1]
                         for k in kinds if k != "None")
    raise InputError(f"{where}{name} = {value!r}: must be {wanted}")


FIELD_TYPES = {f.name: str(f.type) for f in fields(TrainConfig)}
