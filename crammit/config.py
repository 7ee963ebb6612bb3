"""Typed, frozen configuration: the model shape, the training recipe, the budget and
corpus preparation.

Defaults reproduce the paper's final setting (crammed-bert, recipe bert-o4, 24 h on one
GPU); every other setting is a value built from these, never a flag read deep inside.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from crammit.errors import ConfigError, CrammitError


class Arch(str, Enum):
    """The block design: the paper's crammed BERT, or the original BERT (Devlin et al.)."""

    CRAMMED = "crammed"  # pre-norm, bias-free, gated-GELU FFN, tied sparse MLM head, no dropout
    BERT = "bert"  # Hugging Face's BertForMaskedLM: post-norm, biases, GELU FFN, dense MLM head


ORIGINAL_BERT_DROPOUT = 0.1


@dataclass(frozen=True)
class ModelConfig:
    """A model's design and shape. The named sizes fix layers, width, heads and FFN width;
    `arch` picks the block design built at that shape."""

    arch: Arch = Arch.CRAMMED
    num_layers: int = 16
    hidden_size: int = 768
    num_heads: int = 12
    intermediate_size: int = 3072  # the GLU halves this before the down-projection
    vocab_size: int = 32768
    seq_len: int = 128
    norm_eps: float = 1e-12
    init_std: float = 0.02
    dropout: float = 0.0  # the original BERT's is 0.1; the crammed design has none

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch", Arch(self.arch))  # read back from JSON as a string
        if self.arch is Arch.CRAMMED and self.dropout:
            raise CrammitError("the crammed arch has no dropout; set dropout only with arch bert")
        if self.hidden_size % self.num_heads:
            raise CrammitError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.intermediate_size % 2:
            raise CrammitError(f"intermediate_size {self.intermediate_size} must be even (GLU)")


# Named sizes, smallest first; `crammed` is the paper's final architecture and `base` is
# BERT-base's shape with the crammed block design.
MODEL_SIZES: dict[str, ModelConfig] = {
    # `micro` (~0.6 M parameters, most of them the embedding) exists for CPU ladders, whose
    # compute-optimal size at their budgets lies below `tiny`.
    "micro": ModelConfig(num_layers=4, hidden_size=64, num_heads=2, intermediate_size=256,
                         vocab_size=8192),
    "tiny": ModelConfig(num_layers=6, hidden_size=128, num_heads=2, intermediate_size=512,
                        vocab_size=8192),
    "mini": ModelConfig(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
    "small": ModelConfig(num_layers=4, hidden_size=512, num_heads=8, intermediate_size=2048),
    "medium": ModelConfig(num_layers=8, hidden_size=512, num_heads=8, intermediate_size=2048),
    "base": ModelConfig(num_layers=12),
    "crammed": ModelConfig(),
    "large": ModelConfig(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),
}


def model_config(size: str, arch: Arch | str = Arch.CRAMMED) -> ModelConfig:
    """The named size's shape in the given design (the original BERT with its dropout), or
    a CrammitError listing the names there are."""
    if size not in MODEL_SIZES:
        raise CrammitError(f"unknown model size {size!r}; choose one of {', '.join(MODEL_SIZES)}")
    archs = [choice.value for choice in Arch]
    if arch not in archs:
        raise CrammitError(f"unknown arch {arch!r}; choose one of {', '.join(archs)}")
    if Arch(arch) is Arch.BERT:
        return dataclasses.replace(MODEL_SIZES[size], arch=Arch.BERT, dropout=ORIGINAL_BERT_DROPOUT)
    return MODEL_SIZES[size]


class BudgetUnit(str, Enum):
    HOURS = "hours"
    TOKENS = "tokens"
    FLOPS = "flops"

    @property
    def is_time(self) -> bool:
        """A wall-clock budget: what a micro-batch costs of it is measured, not known ahead."""
        return self is BudgetUnit.HOURS


@dataclass(frozen=True)
class Budget:
    """How much training a run may spend: wall-clock hours, training tokens or FLOPs.

    Schedules read only `progress`, so a 6 h and a 24 h run follow the same curve.
    """

    amount: float = 24.0
    unit: BudgetUnit = BudgetUnit.HOURS

    def __post_init__(self) -> None:
        if not 0 < self.amount < math.inf:
            raise ConfigError("budget", "must be positive and finite", f"{self.amount:g} {self.unit.value}")

    @classmethod
    def hours(cls, hours: float) -> Budget:
        return cls(hours, BudgetUnit.HOURS)

    @classmethod
    def tokens(cls, tokens: float) -> Budget:
        return cls(tokens, BudgetUnit.TOKENS)

    @classmethod
    def flops(cls, flops: float) -> Budget:
        return cls(flops, BudgetUnit.FLOPS)

    def fraction(self, elapsed_s: float, tokens: float, flops: float) -> float:
        """What this much time, tokens and FLOPs is of the budget (more than 1 past it)."""
        spent = {BudgetUnit.HOURS: elapsed_s / 3600, BudgetUnit.TOKENS: tokens,
                 BudgetUnit.FLOPS: flops}[self.unit]
        return spent / self.amount

    def progress(self, elapsed_s: float, tokens: float, flops: float) -> float:
        """Fraction of the budget spent, in [0, 1]."""
        return min(1.0, self.fraction(elapsed_s, tokens, flops))

    def describe(self) -> str:
        return f"{self.amount:g} {self.unit.value}"


class Schedule(str, Enum):
    """The learning rate's shape over budget progress p."""

    TRIANGLE = "triangle"  # the paper's budget-triangle2: up to the peak at 1 - decay_fraction, then down
    WARMUP_LINEAR = "warmup-linear"  # BERT's: linear warm-up over warmup_fraction, then linear to 0


# Each training micro-batch's masks come from a generator seeded by one 64-bit integer that
# packs the run's seed, the worker's rank and the micro-batch's index (`loader.mask_seed`):
# distinct for every micro-batch of every run with a seed below MAX_SEED and at most
# MAX_WORKERS workers.
MASK_INDEX_BITS, MASK_RANK_BITS, MASK_SEED_BITS = 32, 8, 24
MAX_SEED = 1 << MASK_SEED_BITS
MAX_WORKERS = 1 << MASK_RANK_BITS


@dataclass(frozen=True)
class RecipeConfig:
    """The training recipe (defaults: the paper's bert-o4): optimizer, learning-rate
    schedule, batch ramp, masking."""

    name: str = "crammed"
    peak_lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-12
    weight_decay: float = 0.01
    grad_clip: float = 0.5
    # budget-triangle2: lr = peak * min(start + p, (1 - p) / decay_fraction)
    schedule: Schedule = Schedule.TRIANGLE
    lr_start_fraction: float = 0.25
    lr_decay_fraction: float = 0.25
    warmup_fraction: float = 0.0  # of the budget, for the warm-up-then-linear schedule
    batch_size: int = 8192  # sequences per optimizer step once the ramp is done
    micro_batch_size: int = 128  # sequences per worker per forward/backward
    ramp_end: float = 0.6  # budget fraction at which the batch ramp reaches batch_size
    mask_rate: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", Schedule(self.schedule))  # read back from JSON as a string
        for name in ("peak_lr", "batch_size", "micro_batch_size"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(name, "must be a positive finite number", getattr(self, name))
        if not 0 < self.mask_rate < 1:
            raise ConfigError("mask_rate", "must be in (0, 1)", self.mask_rate)
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError("warmup_fraction", "must be in [0, 1)", self.warmup_fraction)
        if not 0 <= self.seed < MAX_SEED:
            raise ConfigError("seed", f"must be in [0, {MAX_SEED})", self.seed)


# The recipes a run or a study setting names; flags and study overrides change their fields.
RECIPES: dict[str, RecipeConfig] = {
    "crammed": RecipeConfig(),
    # Devlin et al. 2019, keyed to budget progress: warm-up over the first 1 % (their
    # 10,000 of 1,000,000 steps), linear decay to 0 at the budget's end, a constant batch.
    "bert": RecipeConfig(name="bert", peak_lr=1e-4, betas=(0.9, 0.999), adam_eps=1e-6, weight_decay=0.01,
                         grad_clip=1.0, schedule=Schedule.WARMUP_LINEAR, warmup_fraction=0.01, batch_size=256,
                         ramp_end=0.0, mask_rate=0.15),
}


def recipe_config(name: str, **changes: Any) -> RecipeConfig:
    """The named recipe with `changes` to its fields, or a CrammitError naming what exists."""
    if name not in RECIPES:
        raise CrammitError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    known = {f.name for f in dataclasses.fields(RecipeConfig)} - {"name"}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise CrammitError(f"unknown recipe key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "betas" in changes:
        changes["betas"] = tuple(changes["betas"])
    return dataclasses.replace(RECIPES[name], **changes)


# DeepSpeed ZeRO stages crammit trains with: stage 3 partitions the parameters, and the final
# model is saved from the module's own state dict.
ZERO_STAGES = (0, 1, 2)


class Device(str, Enum):
    CPU = "cpu"
    CUDA = "cuda"


class Tracker(str, Enum):
    """An experiment tracker records can go to, beside crammit's own files (`--tracker`)."""

    MLFLOW = "mlflow"
    TENSORBOARD = "tensorboard"
    WANDB = "wandb"


@dataclass(frozen=True)
class Tracking:
    """Where a run, study or GLUE evaluation is tracked: the trackers (none by default), the
    MLflow store ("": DIR/mlruns of the run's or study's directory) and the W&B mode ("":
    W&B's own default). The command line fills these from MLFLOW_TRACKING_URI and WANDB_MODE,
    so Ray workers on other machines log where the command was told to."""

    trackers: tuple[Tracker, ...] = ()
    mlflow_uri: str = ""
    wandb_mode: str = ""

    def __post_init__(self) -> None:
        # Read back from JSON as strings; a tracker named twice logs once.
        object.__setattr__(self, "trackers", tuple(dict.fromkeys(Tracker(t) for t in self.trackers)))


@dataclass(frozen=True)
class LaunchOptions:
    """How one launch of a run runs it, not what the run is: `crammit train --resume` may
    change these, and a study's resumed trial takes the study's current ones."""

    cpu_threads: int = 0  # torch threads of each CPU worker; 0: as many as its Ray CPUs
    checkpoint_every_s: float = 1800.0  # wall-clock seconds between checkpoints
    checkpoint_every_steps: int = 0  # 0: by time only; tests checkpoint by step
    keep_checkpoints: int = 2
    report_every_s: float = 10.0  # wall-clock seconds between reports to Ray Train (and Tune)
    max_failures: int = 3  # worker failures Ray Train recovers from (restarting at the last checkpoint)
    progress_bar: bool = True
    profile_steps: int = 0  # steady steps traced by torch.profiler into the run's profile/; 0: none
    tracking: Tracking = field(default_factory=Tracking)  # rank 0 logs to these trackers too

    def __post_init__(self) -> None:
        if not 0 <= self.checkpoint_every_s < math.inf:
            raise ConfigError("checkpoint_every_s", "must be a finite number >= 0", self.checkpoint_every_s)
        if self.profile_steps < 0:
            raise ConfigError("profile_steps", "must be >= 0", self.profile_steps)
        if self.max_failures < -1:
            raise ConfigError("max_failures", "must be >= 0 (or -1: no limit)", self.max_failures)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LaunchOptions:
        return cls(**{**data, "tracking": Tracking(**data.get("tracking", {}))})


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; saved as the run directory's config.json."""

    run_dir: str
    model: ModelConfig = field(default_factory=ModelConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    budget: Budget = field(default_factory=Budget)
    corpus: str = "embedded"
    data: str = ""  # a `crammit data prepare` directory; replaces `corpus` when set
    size_name: str = "crammed"
    device: Device = Device.CUDA
    num_workers: int = 1
    zero_stage: int = 0
    compile: bool = True
    deepspeed_overrides: dict[str, Any] = field(default_factory=dict)
    max_eval_sequences: int = 512  # held-out sequences evaluated, at most (all, when fewer)
    # Held-out loss depends on how much is masked: one rate for every recipe keeps runs comparable.
    eval_mask_rate: float = 0.15
    eval_every_s: float = 0.0  # seconds of training between held-out evaluations; 0: first and last only
    deterministic: bool = False
    launch: LaunchOptions = field(default_factory=LaunchOptions)

    def __post_init__(self) -> None:
        if self.zero_stage not in ZERO_STAGES:
            raise ConfigError("zero_stage", f"must be one of {', '.join(map(str, ZERO_STAGES))}",
                              self.zero_stage, subject="ZeRO stage")
        if not 1 <= self.num_workers <= MAX_WORKERS:
            raise ConfigError("num_workers", f"must be from 1 to {MAX_WORKERS}", self.num_workers)
        if self.max_eval_sequences < 1:
            raise ConfigError("max_eval_sequences", "must be at least 1", self.max_eval_sequences)
        if not 0 <= self.eval_every_s < math.inf:
            raise ConfigError("eval_every_s", "must be a finite number >= 0", self.eval_every_s)

    def run_defining(self) -> dict[str, Any]:
        """What makes this run the run it is: all but its directory and how it is launched.
        A run resumed with other values here would be two runs in one directory."""
        return {key: value for key, value in self.to_dict().items() if key not in ("run_dir", "launch")}

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        recipe = dict(data["recipe"], betas=tuple(data["recipe"]["betas"]))
        budget = data["budget"]
        # Runs made before the split kept the launch options beside the run's own fields.
        launch_keys = {f.name for f in dataclasses.fields(LaunchOptions)}
        flat = {key: data[key] for key in launch_keys if key in data}
        return cls(**{
            **{key: value for key, value in data.items() if key not in launch_keys},
            "model": ModelConfig(**data["model"]),
            "recipe": RecipeConfig(**recipe),
            "budget": Budget(budget["amount"], BudgetUnit(budget["unit"])),
            "device": Device(data["device"]),
            "launch": LaunchOptions.from_dict(data.get("launch", flat)),
        })


@dataclass(frozen=True)
class GlueRecipe:
    """GLUE fine-tuning, the paper's "GLUE-sane": one set of hyper-parameters for every task
    (AdamW, 10 % linear warm-up then cosine decay to zero, no dropout)."""

    lr: float = 4e-5
    betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    weight_decay: float = 0.0
    batch_size: int = 16
    epochs: int = 5
    warmup_fraction: float = 0.1
    seq_len: int = 128  # tokens per example, pair included; longer pairs are truncated
    max_train_examples: int = 0  # 0: the whole training set; else a fixed random subset

    def __post_init__(self) -> None:
        for name in ("lr", "batch_size", "epochs", "seq_len"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(name, "must be a positive finite number", getattr(self, name),
                                  subject=f"GLUE {name}")
        for name in ("adam_eps", "weight_decay"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(name, "must be a finite number >= 0", getattr(self, name),
                                  subject=f"GLUE {name}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError("warmup_fraction", "must be in [0, 1)", self.warmup_fraction)
        if self.max_train_examples < 0:
            raise ConfigError("max_train_examples", "must be >= 0", self.max_train_examples)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GlueRecipe:
        return cls(**{**data, "betas": tuple(data["betas"])})


class SequenceOrder(str, Enum):
    PREVALENCE = "prevalence"  # the paper: sequences of common tokens first
    SHUFFLE = "shuffle"


@dataclass(frozen=True)
class PrepareConfig:
    """What `crammit data prepare` does to a corpus; recorded in the prepared directory's manifest."""

    corpus: str = "embedded"
    text_field: str = "text"
    vocab_size: int = 32768
    seq_len: int = 128
    lowercase: bool = True  # the WordPiece tokenizer is uncased
    max_document_chars: int = 100_000  # longer documents (giant lines) are chunked
    max_tokens_per_char: float = 0.3  # the paper's compression filter threshold
    near_duplicate_threshold: float = 0.0  # MinHash Jaccard above which documents are near-duplicates; 0: off
    minhash_permutations: int = 128
    shingle_words: int = 5  # near-duplicates compare word 5-grams
    tokenizer_sample_documents: int = 200_000
    tokenizer: str = ""  # an existing tokenizer.json to use instead of training one
    eval_fraction: float = 0.02
    order: SequenceOrder = SequenceOrder.PREVALENCE
    seed: int = 0
    sequences_per_shard: int = 65_536
    documents_per_batch: int = 1024  # documents tokenized, and packed, together
    partitions: int = 16  # blocks of the near-duplicate bucket shuffle

    def __post_init__(self) -> None:
        if not 0 <= self.near_duplicate_threshold < 1:
            raise ConfigError("near_duplicate_threshold", "must be a Jaccard similarity in [0, 1), e.g. 0.8 "
                              "(0: keep near-duplicates)", self.near_duplicate_threshold)
        for name in ("vocab_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1", getattr(self, name))
        if not 0 < self.max_tokens_per_char < math.inf:
            raise ConfigError("max_tokens_per_char", "must be a positive finite number",
                              self.max_tokens_per_char)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value
