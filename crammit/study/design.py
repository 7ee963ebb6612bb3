"""A better design, proposed: the trials a study should add so that its law can answer its
question, bought where they narrow the law most per unit of compute.

Moves extend the study the way a study file can say it: a budget half the smallest (for
every size), the next smaller named size at the smallest budget, or one more seed at the
smallest budget. They are chosen greedily by how much each cuts the expected error of the
law's alpha, beta and E per FLOP, judged on point fits of a few simulated studies (a
linearised covariance misses what matters in small designs: E running to its bound and the
exponents with it), within a share of the study's compute; the proposal's before and after
are then simulated as every plan's precision is, with their bootstraps.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from crammit.config import MODEL_SIZES
from crammit.errors import CrammitError
from crammit.study.laws import FitOptions, fit_params_tokens_law
from crammit.study.precision import Precision, ReferenceLaw, simulation_pool, width_text
from crammit.study.spec import Setting, StudySpec

EXTRA_COMPUTE = 0.25  # the most a suggestion adds, as a share of the study's compute
MAX_MOVES = 8
SEARCH_STUDIES = 6  # simulated studies a candidate is judged on (point fits, common draws)
SEARCH_FIT = FitOptions(resamples=1, starts=2)  # a point fit is all the search needs
LADDER_DEPTH = 3  # budgets are halved down to an eighth of a setting's smallest
SMALLER_SUFFIX = "_smaller"  # the setting that holds the smaller sizes a suggestion adds


@dataclass(frozen=True)
class Suggestion:
    """The proposed study, what it adds, and its expected precision before and after."""

    spec: StudySpec
    moves: tuple[str, ...]
    added_trials: int
    extra_compute: float  # share of the original study's FLOPs
    before: Precision
    after: Precision

    def lines(self) -> list[str]:
        changes = []
        for name in ("alpha", "beta", "E"):
            before, after = self.before.half_widths.get(name), self.after.half_widths.get(name)
            if before is not None and after is not None:
                changes.append(f"{name} {width_text(before)} → {width_text(after)}")
        newly = [name for name in self.before.unidentified if name not in self.after.unidentified]
        still = list(self.after.unidentified)
        return [f"suggestion: {'; '.join(self.moves)}: {self.added_trials} more trials, "
                f"+{self.extra_compute:.0%} compute; {', '.join(changes)}"
                + (f"; {', '.join(newly)} become{'s' if len(newly) == 1 else ''} identifiable"
                   if newly else "")
                + (f"; still not identified: {', '.join(still)}" if still else "")]


def _imprecision(design: pd.DataFrame, law: ReferenceLaw, noise: float) -> float:
    """What the greedy search narrows: the mean relative error of the L(N, D) point fits' alpha,
    beta and E over SEARCH_STUDIES simulated studies of the design (summed over its law
    groups). Each trial's noise depends only on the simulated study and the trial's name, so
    two candidate designs are compared on the same draws for the trials they share."""
    error = 0.0
    truth = np.array([law.E, law.alpha, law.beta])
    with threadpool_limits(1, user_api="blas"):  # the fits' vectors are tiny: threads only contend
        for _, group in design.groupby("law_group"):
            params, tokens = group["params"].to_numpy(float), group["tokens"].to_numpy(float)
            for study in range(SEARCH_STUDIES):
                draws = np.array([np.random.default_rng([study, zlib.crc32(name.encode())]).standard_normal()
                                  for name in group["trial"]])
                loss = law.loss(params, tokens) * np.exp(noise * draws)
                try:
                    fitted = fit_params_tokens_law(params, tokens, loss, SEARCH_FIT)
                except CrammitError:
                    return np.inf
                error += float(np.abs(fitted.estimate[[0, 3, 4]] / truth - 1).sum()) / SEARCH_STUDIES
    return error


def _moves(spec: StudySpec, original: StudySpec) -> list[tuple[str, StudySpec]]:
    """Each way to extend the study: per original setting, a budget half its smallest (down to
    an eighth of the original smallest; for its `<name>_smaller` setting too), the next
    smaller named size at the smallest budget (in `<name>_smaller`, which shares the law), or
    one more seed at the smallest budget."""
    moves = []
    names = [setting.name for setting in spec.settings]
    for setting in original.settings:
        floor = min(setting.budgets) / 2**LADDER_DEPTH
        for name in (setting.name, f"{setting.name}{SMALLER_SUFFIX}"):
            if name in names:
                moves += _halved_budget(spec, names.index(name), floor)
        current = spec.settings[names.index(setting.name)]
        smallest = min(current.budgets)
        more = tuple(count + (budget == smallest)
                     for count, budget in zip(_seed_counts(current), current.budgets, strict=True))
        moves.append((f"{setting.name}: one more seed at {smallest:g} {spec.unit.value}",
                      _with(spec, names.index(setting.name), seeds=_seeds(more))))
        moves += _smaller_size(spec, setting, names)
    return moves


def _halved_budget(spec: StudySpec, index: int, floor: float) -> list[tuple[str, StudySpec]]:
    """A budget half the setting's smallest, for every size, with the smallest's seeds."""
    setting = spec.settings[index]
    smallest = min(setting.budgets)
    if smallest / 2 < floor:
        return []
    seeds = _seed_counts(setting)
    return [(f"{setting.name}: add budget {smallest / 2:g} {spec.unit.value}",
             _with(spec, index, budgets=(smallest / 2, *setting.budgets),
                   seeds=_seeds((seeds[setting.budgets.index(smallest)], *seeds))))]


def _seed_counts(setting: Setting) -> tuple[int, ...]:
    return setting.seeds if isinstance(setting.seeds, tuple) else (setting.seeds,) * len(setting.budgets)


def _smaller_size(spec: StudySpec, setting: Setting, names: list[str]) -> list[tuple[str, StudySpec]]:
    """The next smaller named size, at the setting's smallest budget, in `<name>_smaller`."""
    extra_name = f"{setting.name}{SMALLER_SUFFIX}"
    sizes_by_params = list(MODEL_SIZES)  # smallest first
    extra = spec.settings[names.index(extra_name)] if extra_name in names else None
    smallest_size = min((extra or setting).sizes, key=sizes_by_params.index)
    smaller = sizes_by_params[:sizes_by_params.index(smallest_size)]
    if not smaller:
        return []
    size, budget = smaller[-1], min(setting.budgets)
    description = f"{setting.name}: add size {size} at {budget:g} {spec.unit.value}"
    if extra is not None:
        return [(description, _with(spec, names.index(extra_name), sizes=(size, *extra.sizes)))]
    added = dataclasses.replace(setting, name=extra_name, sizes=(size,), budgets=(budget,), seeds=1)
    return [(description, dataclasses.replace(spec, settings=(*spec.settings, added)))]


def _seeds(counts: tuple[int, ...]) -> int | tuple[int, ...]:
    return counts[0] if len(set(counts)) == 1 else counts


def _with(spec: StudySpec, index: int, **changes) -> StudySpec:
    settings = list(spec.settings)
    settings[index] = dataclasses.replace(settings[index], **changes)
    return dataclasses.replace(spec, settings=tuple(settings))


def suggest_design(spec: StudySpec, design_of: Callable[[StudySpec], pd.DataFrame], law: ReferenceLaw,
                   noise: float, simulate: Callable[[pd.DataFrame], Precision],
                   before: Precision | None = None, pool: Executor | None = None) -> Suggestion:
    """Greedy: the move that cuts the expected error of alpha, beta and E most (relative to the
    reference law) per added FLOP, while the added compute stays within EXTRA_COMPUTE of the
    study's; then the before and after simulated with their bootstraps. Each step's
    candidates are judged at once on `pool` (default: a `simulation_pool` of its own)."""
    design = design_of(spec)
    if design["tokens"].isna().any():
        raise CrammitError("a suggestion needs every trial's tokens: give token or FLOP budgets, or run on a "
                           "cluster whose throughput is known")
    if pool is None:
        with simulation_pool() as own:
            return suggest_design(spec, design_of, law, noise, simulate, before, own)
    current, moves = _greedy(spec, design_of, law, noise, pool)
    if not moves:
        raise CrammitError("no extra trials within +25 % compute narrow the law")
    after_design = design_of(current)
    return Suggestion(current, tuple(moves), len(after_design) - len(design),
                      float(after_design["flops"].sum()) / float(design["flops"].sum()) - 1,
                      before or simulate(design), simulate(after_design))


def _greedy(spec: StudySpec, design_of: Callable[[StudySpec], pd.DataFrame], law: ReferenceLaw,
            noise: float, pool: Executor) -> tuple[StudySpec, list[str]]:
    """The study after each best move in turn, and the moves' descriptions."""
    design = design_of(spec)
    base = spent = float(design["flops"].sum())
    imprecision = functools.partial(_imprecision, law=law, noise=noise)
    current, width, moves = spec, imprecision(design), []
    while len(moves) < MAX_MOVES:
        candidates = []
        for description, candidate in _moves(current, spec):
            candidate_design = design_of(candidate)
            cost = float(candidate_design["flops"].sum())
            if cost <= (1 + EXTRA_COMPUTE) * base:
                candidates.append((description, candidate, cost, candidate_design))
        widths = pool.map(imprecision, [candidate_design for *_, candidate_design in candidates])
        best = None
        for (description, candidate, cost, _), candidate_width in zip(candidates, widths, strict=True):
            gain = (width - candidate_width) / max(cost - spent, 1e-300)
            if gain > 0 and (best is None or gain > best[0]):
                best = (gain, description, candidate, cost, width - gain * (cost - spent))
        if best is None:
            break
        _, description, current, spent, width = best
        moves.append(description)
    return current, moves
