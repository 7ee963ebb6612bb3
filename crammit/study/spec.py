"""What a study runs: settings (a recipe, sizes, GPUs per trial, budgets) and the trials
they expand to, read from a study file or built by `crammit study scaling`.

A study file (`studies/*.toml`) is checked key by key: a misspelt key is an error, not a
silently ignored default.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import tomli_w

from crammit.config import Arch, Budget, ModelConfig, RecipeConfig, SequenceOrder, model_config, recipe_config
from crammit.data.layout import model_for
from crammit.errors import ConfigError, CrammitError
from crammit.eval.glue_data import GlueTask, parse_tasks
from crammit.io import atomic_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib



class StudyUnit(str, Enum):
    """Units a study's budgets are given in; minutes become an hours budget."""

    HOURS = "hours"
    MINUTES = "minutes"
    TOKENS = "tokens"
    FLOPS = "flops"

    def budget(self, amount: float) -> Budget:
        if self is StudyUnit.MINUTES:
            return Budget.hours(amount / 60)
        return {StudyUnit.HOURS: Budget.hours, StudyUnit.TOKENS: Budget.tokens,
                StudyUnit.FLOPS: Budget.flops}[self](amount)

    @property
    def suffix(self) -> str:
        return {StudyUnit.HOURS: "h", StudyUnit.MINUTES: "m", StudyUnit.TOKENS: "tok",
                StudyUnit.FLOPS: "flop"}[self]


@dataclass(frozen=True)
class Setting:
    """One configuration a study compares: a recipe (with overrides), model sizes, the
    resources of each trial, and the budgets each size is trained for."""

    name: str
    sizes: tuple[str, ...]
    budgets: tuple[float, ...]
    gpus: int = 1  # GPUs per trial; 0 trains on CPU workers
    workers: int = 1  # CPU workers per trial when gpus == 0
    arch: str = Arch.CRAMMED.value  # the block design: crammed or bert (the original)
    recipe: str = "crammed"  # a name in config.RECIPES: crammed or bert
    overrides: dict[str, Any] = field(default_factory=dict)  # RecipeConfig fields
    # Trials of each size and budget, each with its own seed: one number, or one per budget.
    seeds: int | tuple[int, ...] = 1

    def __post_init__(self) -> None:
        where = f"setting {self.name!r}"
        if isinstance(self.seeds, list):
            object.__setattr__(self, "seeds", tuple(self.seeds))
        counts = self.seeds if isinstance(self.seeds, tuple) else (self.seeds,)
        if any(isinstance(count, bool) or not isinstance(count, int) or count < 1 for count in counts):
            raise ConfigError("seeds", "must be whole numbers of at least 1", self.seeds, where=where)
        if isinstance(self.seeds, tuple) and len(self.seeds) != len(self.budgets):
            raise CrammitError(f"{where}: seeds lists one count per budget: {len(self.seeds)} counts for "
                               f"{len(self.budgets)} budgets")
        if not self.name or not all(c.isalnum() or c in "_." for c in self.name):
            raise CrammitError(f"{where}: a setting name uses letters, digits, '_' and '.' only")
        if not self.sizes:
            raise CrammitError(f"{where}: give at least one size")
        for size in self.sizes:
            model_config(size, self.arch)
        if not self.budgets:
            raise CrammitError(f"{where}: give at least one budget")
        for budget in self.budgets:
            if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
                raise CrammitError(f"{where}: budget {budget!r} is not a positive number")
        if self.gpus < 0:
            raise ConfigError("gpus", "must be >= 0", self.gpus, where=where)
        if self.workers < 1:
            raise ConfigError("workers", "must be at least 1", self.workers, where=where)
        self.recipe_config()  # an unknown recipe or invalid overrides fail here, before any work

    @property
    def workers_per_trial(self) -> int:
        return self.gpus or self.workers

    def seeds_at(self, budget: float) -> int:
        """How many seeds the trials at `budget` run."""
        return self.seeds[self.budgets.index(budget)] if isinstance(self.seeds, tuple) else self.seeds

    def recipe_config(self) -> RecipeConfig:
        try:
            return recipe_config(self.recipe, **self.overrides)
        except ConfigError as error:
            raise error.within(f"setting {self.name!r}") from None
        except CrammitError as error:
            raise CrammitError(f"setting {self.name!r}: {error}") from None

    def recipe_label(self) -> str:
        """The `recipe` column: the recipe's name and what the setting changes in it (the
        `arch` column says which design it trains)."""
        changes = ", ".join(f"{key}={value}" for key, value in sorted(self.overrides.items()))
        return f"{self.recipe} ({changes})" if changes else self.recipe


@dataclass(frozen=True)
class StudyData:
    """The one corpus every trial of a study trains on. A study shuffles its corpus (with
    `seed`): budgets end at different places in it, and each budget's final, annealed
    stretch must see data of the same difficulty, which prevalence order does not give."""

    corpus: str = "embedded"
    data: str = ""  # a `crammit data prepare` directory; replaces corpus when set
    vocab_size: int = 32768
    seq_len: int = 128
    order: str = SequenceOrder.SHUFFLE.value  # how the study prepares its corpus
    seed: int = 0  # of the shuffle

    def __post_init__(self) -> None:
        orders = [choice.value for choice in SequenceOrder]
        if self.order not in orders:
            raise CrammitError(f"unknown corpus order {self.order!r} ([data] order); use one of "
                               f"{', '.join(orders)}")


@dataclass(frozen=True)
class StudyGlue:
    """GLUE fine-tuning of every finished trial's final model (the GLUE-sane recipe); no
    tasks: none."""

    tasks: tuple[str, ...] = ()
    seeds: int = 1
    glue_dir: str = ""  # the official GLUE TSV layout; empty: the Hugging Face hub
    max_train_examples: int = 0  # 0: whole training sets

    def __post_init__(self) -> None:
        self.task_list()  # unknown tasks fail here, before any work
        if self.seeds < 1:
            raise ConfigError("seeds", "must be at least 1", self.seeds, subject="GLUE seeds")

    def task_list(self) -> tuple[GlueTask, ...]:
        return parse_tasks(",".join(self.tasks)) if self.tasks else ()

    def data_path(self) -> Path | None:
        return Path(self.glue_dir) if self.glue_dir else None


@dataclass(frozen=True)
class StudySpec:
    """A whole study: its settings, budget unit, data, and how trials checkpoint."""

    name: str
    settings: tuple[Setting, ...]
    unit: StudyUnit = StudyUnit.HOURS
    data: StudyData = field(default_factory=StudyData)
    glue: StudyGlue = field(default_factory=StudyGlue)
    checkpoint_minutes: float = 30.0
    max_eval_sequences: int = 512
    resamples: int = 1000  # bootstrap resamples of the fits' intervals

    def __post_init__(self) -> None:
        if not self.settings:
            raise CrammitError(f"study {self.name!r} has no settings")
        names = [setting.name for setting in self.settings]
        if len(set(names)) != len(names):
            raise CrammitError(f"study {self.name!r}: setting names must be unique, got {', '.join(names)}")
        if not self.checkpoint_minutes > 0:
            raise CrammitError(f"checkpoint_minutes must be positive, got {self.checkpoint_minutes}")

    def trials(self) -> list[Trial]:
        return [Trial(setting, size, budget, self.unit, seed)
                for setting in self.settings for size in setting.sizes for budget in setting.budgets
                for seed in range(setting.seeds_at(budget))]

    def to_dict(self) -> dict[str, Any]:
        """The TOML layout a study file uses (what `study.toml` holds)."""
        return {
            "name": self.name, "unit": self.unit.value, "checkpoint_minutes": self.checkpoint_minutes,
            "max_eval_sequences": self.max_eval_sequences, "resamples": self.resamples,
            "data": {key: value for key, value in dataclasses.asdict(self.data).items() if value != ""},
            **({"glue": {key: list(value) if key == "tasks" else value
                         for key, value in dataclasses.asdict(self.glue).items() if value != ""}}
               if self.glue.tasks else {}),
            "settings": [
                {"name": s.name, "arch": s.arch, "recipe": s.recipe, "sizes": list(s.sizes),
                 "budgets": list(s.budgets), "gpus": s.gpus, "workers": s.workers,
                 "seeds": list(s.seeds) if isinstance(s.seeds, tuple) else s.seeds,
                 **({"overrides": s.overrides} if s.overrides else {})}
                for s in self.settings
            ],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "study") -> StudySpec:
        _check_keys(raw, {"name", "unit", "checkpoint_minutes", "max_eval_sequences", "resamples", "data",
                          "glue", "settings"}, source)
        data = raw.get("data", {})
        _check_keys(data, {f.name for f in dataclasses.fields(StudyData)}, f"{source} [data]")
        glue = raw.get("glue", {})
        _check_keys(glue, {f.name for f in dataclasses.fields(StudyGlue)}, f"{source} [glue]")
        settings = []
        for index, setting in enumerate(raw.get("settings", [])):
            where = f"{source} [[settings]] #{index + 1}"
            _check_keys(setting, {f.name for f in dataclasses.fields(Setting)}, where)
            if "name" not in setting:
                raise CrammitError(f"{where}: every setting needs a name")
            settings.append(Setting(
                **{key: value for key, value in setting.items() if key not in ("sizes", "budgets")},
                sizes=tuple(setting.get("sizes", ())), budgets=tuple(setting.get("budgets", ())),
            ))
        unit = raw.get("unit", StudyUnit.HOURS.value)
        if unit not in [u.value for u in StudyUnit]:
            raise CrammitError(f"{source}: unknown unit {unit!r}; use one of "
                               f"{', '.join(u.value for u in StudyUnit)}")
        return cls(
            name=raw.get("name", Path(source).stem), settings=tuple(settings), unit=StudyUnit(unit),
            data=StudyData(**data), glue=StudyGlue(**{**glue, "tasks": tuple(glue.get("tasks", ()))}),
            **{key: raw[key] for key in ("checkpoint_minutes", "max_eval_sequences", "resamples")
               if key in raw},
        )


class TrialStatus(str, Enum):
    """Where a trial's run directory says it stands (`trials.parquet`'s `status`)."""

    OK = "ok"  # final.json written
    INTERRUPTED = "interrupted"  # started (config.json) but not finished: resumed from its checkpoint
    FAILED = "failed"  # its last attempt raised: retried by the next run of the study
    PENDING = "pending"  # not started


@dataclass(frozen=True)
class Trial:
    """One training run of a study: a setting's size at one budget, with one seed."""

    setting: Setting
    size: str
    budget: float
    unit: StudyUnit
    seed: int = 0  # added to the recipe's seed

    @property
    def name(self) -> str:
        """Deterministic, so a re-run of the study finds the trial's directory again; the
        first seed's name has no suffix, so a study given more seeds keeps its trials."""
        amount = f"{self.budget:g}".replace("e+0", "e").replace("e+", "e")
        seed = f"-s{self.seed}" if self.seed else ""
        return f"{self.setting.name}-{self.size}-{amount}{self.unit.suffix}{seed}"


def trial_model(spec: StudySpec, size: str, arch: str) -> ModelConfig:
    """The size in the arch's design on the study's corpus (its vocabulary and sequence length)."""
    if spec.data.data:
        return model_for(size, Path(spec.data.data), arch)
    return dataclasses.replace(model_config(size, arch), vocab_size=spec.data.vocab_size,
                               seq_len=spec.data.seq_len)


def read_study_file(path: Path) -> StudySpec:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise CrammitError(f"cannot read study file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise CrammitError(f"study file {path} is not valid TOML: {error}") from None
    return StudySpec.from_dict(raw, source=str(path))


def write_study_file(path: Path, spec: StudySpec) -> None:
    """`spec` as a study file that `read_study_file` reads back, written atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(tomli_w.dumps(spec.to_dict()))


def parse_budgets(text: str) -> tuple[float, ...]:
    """`--budgets 6,12,24` as numbers, each positive."""
    budgets = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise CrammitError(f"--budgets: {item.strip()!r} is not a number; give e.g. 6,12,24") from None
        if not value > 0:
            raise CrammitError(f"--budgets: {item.strip()} is not positive; give e.g. 6,12,24")
        budgets.append(value)
    return tuple(budgets)


def _check_keys(table: Any, known: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise CrammitError(f"{where} must be a table")
    unknown = sorted(set(table) - known)
    if unknown:
        raise CrammitError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
