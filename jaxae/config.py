"""Every setting of a run: one dataclass, its presets, its checks, and the flags generated from it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
from typing import Any


class UsageError(Exception):
    """A mistake the user can fix (bad flag, missing file, ...). Scripts print it on one line and exit 2."""


class TrainingStopped(Exception):
    """Training cannot go on (non-finite loss, collapse): scripts print it on one line and exit 1; the run's
    checkpoints are kept."""


def _f(default, help: str, choices=None, flag: bool = True):
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


@dataclasses.dataclass(frozen=True)  # hashable: a jit's static argument (change it with .replace)
class Config:
    # --- data
    data: str = _f("tfds", "'tfds' (download/prepare with tensorflow-datasets) or a local copy: a folder with "
                   "train/<class>/ and test/<class>/ images, a .tar/.tar.gz of one, or the official "
                   "cifar-10-python.tar.gz / cifar-10-batches-py folder")
    dataset: str = _f("cifar10", "tfds dataset name, used when --data tfds")
    cache_dir: str = _f("", "where decoded local datasets (.npz) and compiled programs (xla/) are cached "
                        "(default ~/.cache/jaxae)")
    # --- model
    latent_dim: int = _f(3, "size of the latent code")
    width: int = _f(16, "channels of the first conv stage; each further stage doubles them")
    stages: int = _f(3, "stride-2 stages in the encoder (and x2 upsampling stages in the decoder)")
    blocks: int = _f(0, "residual 3x3 conv blocks per stage after each down/upsampling")
    hidden: int = _f(512, "width of the MLP between the conv features and the latent code")
    mlp_layers: int = _f(3, "hidden layers of that MLP, on each side of the code")
    mlp: str = _f("plain", "that MLP: 'plain' (Dense layers, each followed by --activation) or 'residual' "
                  "(pre-LayerNorm residual blocks)",
                  ["plain", "residual"])
    fourier: int = _f(0, "decoder input: the code plus sin/cos of this many learned projections of it (0 = the code)")
    norm: str = _f("layer", "normalisation inside the residual blocks", ["none", "layer", "group"])
    activation: str = _f("relu", "non-linearity of every hidden layer: gelu (tanh approximation), relu or silu",
                         ["gelu", "relu", "silu"])
    upsample: str = _f("pixel_shuffle", "decoder upsampling: 'pixel_shuffle' (fast everywhere), 'conv_transpose' "
                       "(nn.ConvTranspose, slow weight gradient on XLA:CPU), 'resize' (nearest + conv)",
                       ["pixel_shuffle", "conv_transpose", "resize"])
    head: str = _f("upsample", "decoder output: 'conv' (last upsampling to --width channels, then a 3x3 conv to the "
                   "image) or 'upsample' (the last upsampling emits the image: no full-resolution conv, cheaper on "
                   "CPUs)", ["conv", "upsample"])
    encoder_heads: int = _f(4, "codes the encoder proposes for each image: the decoder draws each, and the one drawn "
                            "nearest the input (by --loss) is the image's code. With 2 or more the encoder can send "
                            "neighbouring images to distant codes, where the decoder's sheet of images folds; each "
                            "costs a decoder pass per image, in training and when encoding")
    dtype: str = _f("float32", "compute dtype (parameters stay float32); bfloat16 is for GPUs/TPUs",
                    ["float32", "bfloat16"])
    # --- objective
    loss: str = _f("l2", "reconstruction loss, averaged per pixel", ["l2", "l1"])
    noise: float = _f(0.0, "corruption strength of the input (0 = plain autoencoder); the target is the clean image")
    corruption: str = _f("gaussian", "kind of input corruption: gaussian (std = noise), mask (fraction of pixels "
                         "zeroed), salt_pepper (fraction of pixels set to 0 or 1)", ["gaussian", "mask", "salt_pepper"])
    noise_levels: str = _f("uniform", "strength of each training example's corruption: 'uniform' (each example's "
                           "own, drawn uniformly from 0 to --noise: the model also sees near-clean inputs, and "
                           "reconstructs clean images as well as noisy ones) or 'fixed' (--noise for every example, "
                           "the classic denoising autoencoder: clean images are then inputs it never saw)",
                           ["uniform", "fixed"])
    flip: bool = _f(True, "augment with random horizontal flips")
    shift: int = _f(0, "augment with random translations of up to this many pixels along each axis, the uncovered "
                    "border filled by reflection (0 = off)")
    # --- optimisation
    epochs: int = _f(100, "passes over the training set")
    batch_size: int = _f(1024, "global batch size, split evenly across all devices")
    optimizer: str = _f("adamw", "optax optimiser", ["adam", "adamw"])
    learning_rate: float = _f(2e-3, "peak learning rate of the warm-up + cosine schedule")
    warmup_epochs: float = _f(3.0, "linear warm-up length in epochs; with fewer --epochs than the preset's, and "
                               "no --warmup-epochs, the preset's warm-up shortened in proportion")
    weight_decay: float = _f(1e-4, "decoupled weight decay (adamw only)")
    grad_clip: float = _f(1.0, "clip gradients to this global norm (0 = off)")
    seed: int = _f(0, "seed of parameters, data order and noise: a run is reproducible from it")
    # --- loop, logging, checkpoints
    workdir: str = _f("runs/default", "folder for checkpoints, metrics, config and figures")
    steps_per_call: int = _f(0, "training steps fused in one jitted call (lax.scan); 0 = per-backend default "
                             "(1 on CPU, where a scan of steps is slower; 50 on GPU/TPU)")
    microbatch: int = _f(0, "examples per forward/backward pass on each device; a step averages the gradients "
                         "of its microbatches, the same update as one pass over the batch; 0 = per-backend "
                         "default (at most 64 on CPU, where smaller passes run faster; the whole per-device "
                         "batch on GPU/TPU)")
    log_every: int = _f(50, "fetch metrics to the host every N steps (progress bar, NaN check)")
    save_every_epochs: int = _f(1, "save a checkpoint every N epochs (and always at the end)")
    keep: int = _f(3, "checkpoints kept (most recent)")
    fresh: bool = _f(False, "start over in a workdir that holds checkpoints (they are moved aside, not deleted)",
                     flag=True)
    preset: str = _f("default", "named group of defaults; explicit flags override it", None)
    coordinator: str = _f("", "multi-process runs: host:port of process 0's coordinator (also "
                          "JAX_COORDINATOR_ADDRESS); SLURM, Open MPI and TPU pods are detected without it")
    num_processes: int = _f(0, "multi-process runs: number of processes (also JAX_NUM_PROCESSES)")
    process_id: int = _f(-1, "multi-process runs: this process's index, 0 .. N-1 (also JAX_PROCESS_ID)")
    max_steps: int = _f(0, "stop after this many steps in total (0 = epochs x steps per epoch); for tests and budgets")

    # Settings that change what a checkpoint means: resuming with a different value is refused.
    MODEL_FIELDS = ("latent_dim", "width", "stages", "blocks", "hidden", "mlp_layers", "mlp", "fourier", "norm",
                    "activation", "upsample", "head", "encoder_heads")
    RUN_FIELDS = MODEL_FIELDS + ("loss", "noise", "corruption", "noise_levels", "flip", "shift", "epochs",
                                 "batch_size", "optimizer", "learning_rate", "warmup_epochs", "weight_decay",
                                 "grad_clip", "seed", "data", "dataset", "dtype")

    def model_settings(self) -> dict[str, Any]:
        """The settings that define the network (MODEL_FIELDS), by name: equal ones build the same architecture."""
        return {k: getattr(self, k) for k in self.MODEL_FIELDS}

    def validate(self) -> "Config":
        """Raise UsageError for values no run can use."""
        for f in dataclasses.fields(self):  # NaN passes every comparison below; inf passes most
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"--{_flag(f.name)} must be a finite number (got {value})")
        if not self.data.strip():  # "" is the current folder to os.path: it was read as one, and blamed
            raise UsageError("--data is empty: give 'tfds' or a local folder, .tar or .tar.gz of the dataset")
        if not self.workdir.strip():  # it was "--workdir  is not writable (No such file or directory)"
            raise UsageError("--workdir is empty: give the folder for the run's checkpoints, metrics and figures")
        if not 0 <= self.seed < 2 ** 32:  # JAX keeps the low 32 bits: seed 2**32 was seed 0's run
            raise UsageError(f"--seed must be a whole number from 0 to {2 ** 32 - 1} (got {self.seed})")
        for name in ("latent_dim", "width", "stages", "hidden", "mlp_layers", "encoder_heads", "epochs", "batch_size",
                     "log_every", "save_every_epochs", "keep"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{_flag(name)} must be at least 1 (got {getattr(self, name)})")
        for name in ("latent_dim", "width", "stages", "blocks", "hidden", "mlp_layers", "fourier", "encoder_heads"):
            if getattr(self, name) > _MAX_SIZE:  # an array's dimension: larger ones failed deep in XLA or MLIR
                raise UsageError(f"--{_flag(name)} must be at most {_MAX_SIZE:,}, the most an array axis holds (got "
                                 f"{getattr(self, name)})")
        for name in ("blocks", "shift", "steps_per_call", "microbatch", "max_steps"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{_flag(name)} must be 0 or more (got {getattr(self, name)})")
        if self.fourier < 0:
            raise UsageError(f"--fourier must be 0 (off) or a positive number of frequencies, not {self.fourier}")
        if not 0.0 <= self.noise <= (10.0 if self.corruption == "gaussian" else 1.0):
            raise UsageError(f"--noise must be between 0 and {'10' if self.corruption == 'gaussian' else '1'} "
                             f"for --corruption {self.corruption} (got {self.noise})")
        if self.norm == "group" and self.blocks and self.width % 8:
            raise UsageError(f"--norm group normalises 8 groups of channels: --width must be a multiple of 8 (got "
                             f"{self.width}), or use --norm layer")
        if self.learning_rate <= 0:
            raise UsageError(f"--learning-rate must be positive (got {self.learning_rate})")
        for name in ("warmup_epochs", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{_flag(name)} must be 0 or more (got {getattr(self, name)})")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise UsageError(f"--{_flag(f.name)} must be one of {', '.join(choices)} "
                                 f"(got {getattr(self, f.name)!r})")
        if self.preset not in PRESETS:
            raise UsageError(f"--preset must be one of {', '.join(PRESETS)} (got {self.preset!r})")
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        """A saved config (config.json); the settings it lacks are those of the version that wrote it (BEFORE).
        A value of the wrong kind (a hand-edited "latent_dim": "3", or "epochs": 3.5) is a TypeError naming it:
        "3" reached validate's comparisons as a traceback, and 3.5 epochs trained, as "epoch 4/3.5"."""
        if not isinstance(d, dict):  # a JSON list or number: an AttributeError traceback
            raise TypeError(f"it holds a JSON {type(d).__name__}, not an object of settings")
        values = {k: v for k, v in d.items() if k in _KINDS}
        for name, value in values.items():
            if not of_kind(name, value):
                raise TypeError(f"{name} is {json.dumps(value)}, not {_KIND_WORDS[_KINDS[name]]}")
            if _KINDS[name] == "float" and type(value) is int:
                try:
                    values[name] = float(value)  # JSON's 1 for 1.0
                except OverflowError:
                    raise TypeError(f"{name} is a whole number of {len(str(value))} digits, too large") from None
        return cls(**{**BEFORE, **values})

    def replace(self, **kw) -> "Config":
        return dataclasses.replace(self, **kw)


# Settings that came with a default other than what the runs before them did, and what a config.json without them
# was trained with: the runs before the twenty-eighth session corrupted every example at --noise ("fixed" levels);
# before the thirty-third session the default model was width 64, one residual block per stage, a 3x3 conv to the
# image, GELU and one encoder head (OLD_MODEL; every config.json holds width and blocks, older ones lack the rest).
OLD_MODEL: dict[str, Any] = {"width": 64, "blocks": 1, "head": "conv", "activation": "gelu", "encoder_heads": 1}
BEFORE: dict[str, Any] = {"noise_levels": "fixed", **OLD_MODEL}

# The default model (the dataclass's): width 16, no residual blocks, the sub-pixel output head, ReLU, MLP 3 x 512, an
# encoder with 4 heads. Named groups of defaults:
# "default" is the accelerator schedule `python train.py` runs: the default model, 100 epochs at batch 1024 with a
# 3-epoch warm-up. On the 2-core CPU box, seed 0: test MSE 0.0261 (0.81 x PCA-3) and 10-NN 31.2 % in 63 minutes
# (thirty-third session; docs/quality.md). Its time on a GPU is not measured yet: 0.056 GFLOP per image per step
# against 0.759 for OLD_MODEL's, which took 63 s of training on an H200.
# The model and the schedule are spelled out, so that `--preset default` on a run of another model or schedule is
# refused by name (checkpoints.resolve_workdir compares the fields a preset sets);
# "long" is the default of the twentieth to the thirty-second session (and its name from the fourteenth to the
# nineteenth): OLD_MODEL with the same schedule. On an H200: test MSE 0.0281-0.0282 over three seeds, 10-NN
# 28.1-28.8 %; a first run (nothing compiled) in 103 s, 77 s with its programs cached (twentieth session). Kept so
# that those runs resume and those commands still run;
# "short" is the default until the twentieth session, OLD_MODEL for 30 epochs at batch 256: 0.0287-0.0297 on 3
# seeds, in about 60 s on an H100;
# "quick" is the default model on the 2-core CPU's schedule: 20 epochs at batch 128 and a peak learning rate of
# 1e-3 train in 12-13 minutes on 2 cores, test MSE 0.0264-0.0266 and 10-NN 29.6-30.8 % on 4 seeds (twenty-ninth
# session; with one head, until then, 30 epochs gave 0.0285-0.0286 in about 10 minutes; bench/quality.py fits
# epochs to any budget). Its model is spelled out: a run of the quick model before the twenty-ninth session (one
# head) is refused by name;
# "tiny" is the few-second model of the tests (OLD_MODEL's head, activation and one encoder head, smaller).
# See docs/quality.md for the studies behind them.
MODEL: dict[str, Any] = {"width": 16, "blocks": 0, "head": "upsample", "hidden": 512, "activation": "relu",
                         "encoder_heads": 4}
PRESETS: dict[str, dict[str, Any]] = {
    "default": {**MODEL, "epochs": 100, "batch_size": 1024, "warmup_epochs": 3.0},
    "long": {**OLD_MODEL, "epochs": 100, "batch_size": 1024, "warmup_epochs": 3.0},
    "short": {**OLD_MODEL, "epochs": 30, "batch_size": 256, "warmup_epochs": 1.0},
    "quick": {**MODEL, "batch_size": 128, "epochs": 20, "learning_rate": 1e-3, "warmup_epochs": 1.0},
    "tiny": {"width": 8, "stages": 2, "blocks": 0, "hidden": 16, "head": "conv", "activation": "gelu",
             "encoder_heads": 1, "epochs": 1, "batch_size": 8, "warmup_epochs": 1.0, "log_every": 2},
}


_KINDS = {f.name: f.type for f in dataclasses.fields(Config)}  # each setting's type, by name: "int", "float", ...
_KIND_WORDS = {"int": "a whole number", "float": "a number", "str": "a string in quotes", "bool": "true or false"}


def of_kind(name: str, value) -> bool:
    """Whether a setting's value read from JSON (config.json, bench/sweep.py's grid) is of the setting's type: by
    type name, so that a bool (an int subclass) is no whole number; a whole number is a number too."""
    return type(value).__name__ == _KINDS[name] or (_KINDS[name] == "float" and type(value) is int)


def strength_text(strength: float, levels: str = "fixed") -> str:
    """A training corruption's strength in words: '0.2', or '0-0.2' where each example drew its own (--noise-levels
    uniform)."""
    return f"0-{strength:g}" if levels == "uniform" else f"{strength:g}"


_MAX_SIZE = 2 ** 31 - 1  # the largest dimension an XLA array has


def _flag(name: str) -> str:
    return name.replace("_", "-")


def config_path(workdir: str) -> str:
    return os.path.join(workdir, "config.json")


def load_config(workdir: str) -> Config:
    path = config_path(workdir)
    if not os.path.isdir(workdir):
        raise UsageError(f"--workdir {workdir}: {'not a folder' if os.path.exists(workdir) else 'no such folder'}; "
                         f"give the folder a training run wrote (it holds config.json and checkpoints/)")
    if not os.path.exists(path):
        raise UsageError(f"{workdir} holds no config.json: is it a jaxae workdir? Train into it with "
                         f"`python train.py --workdir {shlex.quote(workdir)}` first")
    try:
        with open(path) as fh:
            return Config.from_dict(json.load(fh))
    except (ValueError, TypeError, OSError) as e:  # not JSON, not an object of settings, unreadable
        raise UsageError(f"{path} cannot be read as a run's config ({type(e).__name__}: {e}): restore it, or train "
                         f"again: `python train.py --workdir {shlex.quote(workdir)} --fresh` moves what the workdir "
                         f"holds aside, or give another --workdir") from None


def add_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """Add one --flag per Config field (or per field in `only`); unset flags stay None."""
    for f in dataclasses.fields(Config):
        if only is not None and f.name not in only:
            continue
        if f.name == "preset":
            help_ = f.metadata["help"] + f"; one of {', '.join(PRESETS)} (default: default)"
        else:  # a help that explains its own default (--cache-dir's "default ~/.cache/jaxae") keeps to that
            help_ = f.metadata["help"] + ("" if "(default " in f.metadata["help"] else f" (default: {f.default})")
        if f.type in ("bool", bool):
            parser.add_argument(f"--{_flag(f.name)}", dest=f.name, default=None,
                                action=argparse.BooleanOptionalAction, help=help_)
        else:
            typ = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            choices = f.metadata.get("choices")  # shown as {l1,l2}: a metavar hid them until a wrong one was given
            parser.add_argument(f"--{_flag(f.name)}", dest=f.name, type=typ, default=None,
                                metavar=None if choices else f.name.upper(), choices=choices, help=help_)


def from_args(args: argparse.Namespace) -> tuple[Config, set[str]]:
    """Config from parsed flags: dataclass defaults < preset < explicit flags. Returns it and the explicit names."""
    given = {k: v for k, v in vars(args).items() if v is not None and k in Config.__dataclass_fields__}
    return with_preset(given).validate(), set(given)


def with_preset(given: dict[str, Any]) -> Config:
    """The settings `given` over their preset's (given["preset"], else "default"), not validated. Fewer epochs than
    the preset's, without a warm-up of their own, shorten its warm-up in proportion (fitted_warmup)."""
    preset = given.get("preset", "default")
    if preset not in PRESETS:
        raise UsageError(f"--preset must be one of {', '.join(PRESETS)} (got {preset!r})")
    cfg = Config(**{**PRESETS[preset], **given})
    if "epochs" in given and "warmup_epochs" not in given:
        cfg = cfg.replace(warmup_epochs=fitted_warmup(preset, cfg.epochs))
    return cfg


def fitted_warmup(preset: str, epochs: int) -> float:
    """The preset's warm-up for a run of `epochs`: as it is, or for fewer epochs than the preset's, shortened in
    proportion, so that the schedule keeps its shape (the default's 3 epochs are 3 % of its 100 epochs, and would be
    the whole of a 3-epoch run): for train.py's --epochs and bench/sweep.py's "epochs" without a warm-up of their own,
    and for bench/quality.py's fitted epochs. A very short run gets hardly any: 1 epoch of the default, 0.03 epochs
    (one step of CIFAR-10 at batch 1024)."""
    base = Config(**PRESETS[preset])
    return base.warmup_epochs if epochs >= base.epochs else round(base.warmup_epochs * epochs / base.epochs, 3)
