"""The search loop: trials drawn from the space, trained by one callable, told to the study.

The loop knows a trial only through `train(values, trial_dir, reporter, time_budget)`: the
caller builds and trains the model those values describe and returns its `TrialResult`; the
loop reports the validation objective to Optuna after each epoch (through the reporter) so the
pruner can stop a hopeless trial early. Trial 0 is the recipe. The search ends when the trial
limit is reached or when what is left of the wall-time budget would not fit another trial.

A budget that holds only a few trials is spent on replicates of the recipe with new seeds rather
than on the sampler's first random draws (see `_queue_replicate`); the final stage soups them.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tunesmith.console import console
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.metrics import Objective
from tunesmith.search import study as studies
from tunesmith.search.space import Space, Values, suggest
from tunesmith.search.study import STARTUP_TRIALS
from tunesmith.train import TrialResult

Train = Callable[[Values, Path, "OptunaReporter", "float | None"], TrialResult]
WORKER_ATTR = "worker"  # host:pid of the process that runs a trial
WALL_ATTR = "wall_s"
RETRY_ATTR = "retry_of"
REPLICATE_ATTR = "replicate"  # the how-manieth replicate of the recipe a trial is
SEED_ATTR = "seed"  # a replicate's training seed, laid over the config's
DUPLICATE_ATTR = "duplicate_of"  # a queued trial another worker queued too, and trained
OVER_LIMIT_ATTR = "over_limit"  # a trial asked for when other workers' trials filled the limit
STOPPED_ATTR = "stopped"  # why a trial ended before its schedule: pruned, early stopping, ...
TIME_CUT = "time budget"  # ... or the time left, its schedule shortened to fit
WAIT_POLL_S = 2.0  # how often the run choosing the final model looks at other workers' trials
# A journal keeps no heartbeats of its own: its workers record theirs as this system attribute
# of their running trial (Unix seconds).
HEARTBEAT_ATTR = "tunesmith:heartbeat"
# Trials that failed in their training one after another before a worker stops: failed trials do
# not count against `search.trials`, so a space whose every trial fails (a module that cannot
# train, a rate that always diverges) would otherwise be drawn from for ever.
FAILURES_IN_A_ROW = 5


class OptunaReporter:
    """The loop's `Reporter`: the validation objective after each evaluation, reported with the
    evaluation's number (the resource Hyperband and successive halving allot)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.evaluations = 0

    def report(self, value: float, step: int) -> None:
        self.evaluations += 1
        self.trial.report(value, self.evaluations)

    def should_prune(self) -> bool:
        return bool(self.trial.should_prune())


@dataclass
class Budget:
    """What the search may spend: wall seconds (less a reserve for the final evaluation) and
    trials, counting what earlier runs of the same study spent."""

    seconds: float | None
    trials: int | None
    spent_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    # The least a trial runs whatever is left (each of its folds is given at least a second):
    # with no more left than that, a trial would overrun the budget.
    least_trial_s: float = 0.0

    def spent(self) -> float:
        return self.spent_before + time.perf_counter() - self.started

    def left(self) -> float | None:
        return None if self.seconds is None else self.seconds - self.spent()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's: its heartbeat says (RDB storages fail stale ones)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def retry_interrupted(study: optuna.Study, run_dir: Path | None = None) -> list[int]:
    """Trials left running by a process of this machine that is gone (a killed run): marked
    failed, and their values queued again. Returns their numbers. The time each ran, from its
    start to the last file its folder under `run_dir` wrote, is recorded as its wall time, so a
    resumed search counts it against the budget."""
    retried = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR)
        if worker is None or _alive(worker):
            continue
        if run_dir is not None:
            ran = _ran_for(trial, run_dir / "trials" / str(trial.number))
            study._storage.set_trial_user_attr(trial._trial_id, WALL_ATTR, ran)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        requeue(study, trial)
        retried.append(trial.number)
    return retried + fail_silent_workers_trials(study)


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a failed trial's values again, as the recipe or replicate it was, marked a retry."""
    kept = {k: trial.user_attrs[k] for k in (REPLICATE_ATTR, SEED_ATTR, "recipe")
            if k in trial.user_attrs}
    study.enqueue_trial(trial.params, user_attrs={**kept, RETRY_ATTR: trial.number})


def fail_silent_workers_trials(study: optuna.Study) -> list[int]:
    """Running trials whose worker stopped sending heartbeats (a machine that died: PostgreSQL
    and journal studies, see `tunesmith.search.study.HEARTBEAT_S`): failed and queued again.
    Returns their numbers; none for storages without heartbeats (SQLite)."""
    if not _heartbeat_interval(study):
        return []
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    if _keeps_heartbeats(study):  # the storage knows; its callback queues them again
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        still = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        return sorted({t.number for t in running} - still)
    failed = []
    for trial in running:
        if time.time() - _last_heartbeat(trial) <= studies.HEARTBEAT_GRACE_S:
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first, and queued it again
        requeue(study, trial)
        failed.append(trial.number)
    return failed


def _last_heartbeat(trial: optuna.trial.FrozenTrial) -> float:
    """When a journal trial's worker last said it was alive (Unix seconds): its last heartbeat,
    or its start if it has none yet."""
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    if beat is not None:
        return float(beat)
    assert trial.datetime_start is not None  # a running trial has started
    return trial.datetime_start.timestamp()


def _keeps_heartbeats(study: optuna.Study) -> bool:
    """Whether the storage records heartbeats itself (PostgreSQL: Optuna's RDB heartbeats)."""
    return bool(getattr(study._storage, "get_heartbeat_interval", lambda: None)())


def _heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between a running trial's heartbeats in this study's storage; None: it keeps none
    (SQLite, whose workers share one machine and are told apart by process id)."""
    from optuna.storages.journal import JournalStorage

    if _keeps_heartbeats(study):
        return int(study._storage.get_heartbeat_interval())  # type: ignore[attr-defined]
    return studies.HEARTBEAT_S if isinstance(study._storage, JournalStorage) else None


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """While a trial trains, tell a storage with heartbeats that its worker is alive, from a
    thread (a long epoch must not look like a dead machine)."""
    storage, interval = study._storage, _heartbeat_interval(study)
    if not interval:
        yield
        return
    native = _keeps_heartbeats(study)
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                if native:
                    storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
                else:
                    storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # failed by another worker that took this one for dead
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _ran_for(trial: optuna.trial.FrozenTrial, folder: Path) -> float:
    """Seconds from a trial's start to the last write in its folder (metrics.jsonl takes a line
    per optimizer step), 0 when it wrote nothing."""
    if trial.datetime_start is None or not folder.is_dir():
        return 0.0
    last = max((path.stat().st_mtime for path in folder.rglob("*") if path.is_file()),
               default=None)
    if last is None:
        return 0.0
    return max(0.0, last - trial.datetime_start.timestamp())


def trial_values(trial: optuna.trial.FrozenTrial | optuna.Trial, values: Values) -> Values:
    """What a trial trains: its drawn values, and a replicate's seed."""
    seed = trial.user_attrs.get(SEED_ATTR)
    return values if seed is None else {**values, "seed": int(seed)}


def is_recipe_or_replicate(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial trains the recipe's values: the recipe itself or one of its replicates."""
    return bool(trial.user_attrs.get("recipe")) or REPLICATE_ATTR in trial.user_attrs


def replicates_fit(finished_trials: int, left: float, recipe_wall: float) -> bool:
    """Whether the trials done and those the time left holds, at the recipe's pace, are no more
    than the sampler draws at random before it models anything."""
    return finished_trials + left / max(recipe_wall, 1e-9) <= STARTUP_TRIALS


def _queue_replicate(study: optuna.Study, budget: Budget, first: Values, seed: int) -> bool:
    """With a budget this short every trial after the recipe would be one of the sampler's
    random draws, judged by one noisy validation score. A replicate of the recipe with another
    seed is a safer use of the time: it starts from the same weights with the same architecture,
    so it soups with the recipe, and a weight average of such runs beats each of them (Wortsman
    et al. 2022, "Model soups"). Queued one at a time, as long as the budget stays this short.
    Returns False when the budget is this short but what is left of it does not hold a whole
    replicate: one cut short would be another recipe (its schedule squeezed), and its weights
    would dilute the soup, so the search ends there."""
    left = budget.left()
    if left is None or study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return True
    done = finished(study)
    # The pace of the recipe's whole runs; the first one's wall also holds one-off costs (the
    # model read from disk, caches filled), so the quickest.
    walls = _whole_walls([t for t in done if is_recipe_or_replicate(t)])
    if not walls or not replicates_fit(len(done), left, min(walls)):
        return True
    if left < min(walls):
        return False
    made = max((int(t.user_attrs[REPLICATE_ATTR]) for t in study.get_trials(deepcopy=False)
                if REPLICATE_ATTR in t.user_attrs), default=0)
    study.enqueue_trial(first, user_attrs={REPLICATE_ATTR: made + 1, SEED_ATTR: seed + made + 1})
    return True


def _claim(trial: optuna.trial.FrozenTrial | optuna.Trial) -> tuple[Any, ...] | None:
    """What a queued trial stands for, the same for every worker that queues it: the recipe,
    the n-th replicate, or the retry of trial n. Sampled trials claim nothing."""
    attrs = trial.user_attrs
    if RETRY_ATTR in attrs:
        return ("retry", attrs[RETRY_ATTR])
    if REPLICATE_ATTR in attrs:
        return ("replicate", attrs[REPLICATE_ATTR])
    return ("recipe",) if attrs.get("recipe") else None


def duplicate_of(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The earlier trial that claims what `trial` claims, if any. Workers sharing a study each
    check before they queue the recipe or a replicate, and two that check at once both queue it;
    the storage hands each queued trial to one worker only, so the lower number is the one that
    trains and the other is dropped here, by whichever worker holds it."""
    claim = _claim(trial)
    if claim is None:
        return None
    earlier = (t for t in study.get_trials(deepcopy=False)
               if t.number < trial.number and t.state != TrialState.FAIL and _claim(t) == claim)
    return next((t.number for t in earlier), None)


def over_limit(study: optuna.Study, trial: optuna.Trial, limit: int) -> bool:
    """Whether the trials numbered before `trial` already fill `search.trials`. Workers count
    before they ask, and two that count at once both ask; the storage numbers trials in the
    order they were asked, so the later one is dropped here, by the rule every worker applies
    alike: a trial counts if it is done, pruned or under way and is not a later copy of a
    queued trial (whose worker drops it, marked or not yet)."""
    kept, claims = 0, set()
    for earlier in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if earlier.number >= trial.number:
            break
        if earlier.state in (TrialState.FAIL, TrialState.WAITING):
            continue
        claim = _claim(earlier)
        if claim is not None:
            if claim in claims:
                continue
            claims.add(claim)
        kept += 1
        if kept >= limit:
            return True
    return False


def was_dropped(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a failed trial was dropped before training (a copy of a queued trial, or one over
    the trial limit), rather than failed by its training."""
    return DUPLICATE_ATTR in trial.user_attrs or OVER_LIMIT_ATTR in trial.user_attrs


def spent_by_study(study: optuna.Study) -> float:
    """Training seconds the study's trials recorded: the finished ones', and what interrupted
    ones ran before the kill (see `retry_interrupted`)."""
    return float(sum(t.user_attrs.get(WALL_ATTR, 0.0) for t in study.get_trials(deepcopy=False)))


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _counted(study: optuna.Study) -> int:
    """Trials that count against `search.trials`: done, pruned or under way."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


def _room_for_another(study: optuna.Study, budget: Budget) -> bool:
    if budget.trials is not None and _counted(study) >= budget.trials:
        return False
    left = budget.left()
    if left is None:
        return True
    if left <= budget.least_trial_s:
        return False
    # A trial shorter than half the quickest whole one so far would be cut too short to
    # compare. Pruned trials and those the budget cut are not whole: a cut trial's wall would let
    # ever shorter ones follow it; with no whole trial yet, the longest of them is the least a
    # whole one takes.
    whole = _whole_walls(finished(study))
    if whole:
        return left > 0.5 * min(whole)
    partial = [t.user_attrs[WALL_ATTR] for t in finished(study) if WALL_ATTR in t.user_attrs]
    return left > (0.5 * max(partial) if partial else 0.0)


def _whole_walls(trials: list[optuna.trial.FrozenTrial]) -> list[float]:
    """The wall times of the trials that ran their schedule (or stopped early on their own):
    completed, not cut by the time budget."""
    return [t.user_attrs[WALL_ATTR] for t in trials
            if t.state == TrialState.COMPLETE and WALL_ATTR in t.user_attrs
            and t.user_attrs.get(STOPPED_ATTR) != TIME_CUT]


def run_trials(
    study: optuna.Study,
    space: Space,
    train: Train,
    *,
    objective: Objective,
    budget: Budget,
    run_dir: Path,
    first: Values | None = None,
    replicate_seed: int | None = None,
    wait_for_others: bool = False,
) -> list[optuna.trial.FrozenTrial]:
    """Ask, train and tell trials until the budget is spent; `first` (the recipe's values) is
    queued before any sampled trial. With `replicate_seed`, a budget too short for the sampler
    to learn anything is spent on replicates of `first` seeded from `replicate_seed + 1` on.
    With `wait_for_others` (the run that chooses the final model), trials other workers are
    still training are waited for: they count against the limit that ended this loop. Returns
    the finished trials."""
    if first is not None:  # once per study, whichever worker comes first
        study.enqueue_trial(first, user_attrs={"recipe": True}, skip_if_exists=True)
    while True:
        _train_while_room(study, space, train, objective=objective, budget=budget,
                          run_dir=run_dir, first=first, replicate_seed=replicate_seed)
        if not wait_for_others or not _waited_for_others(study, budget):
            return finished(study)


def _waited_for_others(study: optuna.Study, budget: Budget) -> bool:
    """Wait while other workers train trials of the study, until they finish, their workers are
    found gone (their trials are then queued again) or the budget runs out. Whether it waited
    and there is room for another trial after it: a trial queued again is this run's to
    train."""
    shown: set[int] = set()
    while running := {t.number for t in study.get_trials(deepcopy=False,
                                                         states=(TrialState.RUNNING,))}:
        left = budget.left()
        if left is not None and left <= 0:
            console.print(f"[yellow]the budget ran out while trials {_numbers(running)} "
                          "trained elsewhere[/]: the final model is chosen without them")
            return False
        if running - shown:
            console.print(f"waiting for trials {_numbers(running)}, which other workers are "
                          "training: the final model is chosen among them too")
            shown |= running
        for number in retry_interrupted(study):
            console.print(f"[yellow]trial {number}'s worker is gone[/]: failed, queued again")
        time.sleep(WAIT_POLL_S if left is None else min(WAIT_POLL_S, left))
    return bool(shown) and _room_for_another(study, budget)


def _numbers(numbers: set[int]) -> str:
    return ", ".join(map(str, sorted(numbers)))


def _train_while_room(
    study: optuna.Study,
    space: Space,
    train: Train,
    *,
    objective: Objective,
    budget: Budget,
    run_dir: Path,
    first: Values | None,
    replicate_seed: int | None,
) -> None:
    failures = 0  # this worker's trials failed in a row
    while _room_for_another(study, budget):
        if failures >= FAILURES_IN_A_ROW:
            console.print(f"[yellow]the last {failures} trials failed[/]: the search stops")
            break
        for number in fail_silent_workers_trials(study):
            console.print(f"[yellow]trial {number}'s worker went silent[/]: failed, queued again")
        if first is not None and replicate_seed is not None and not _queue_replicate(
                study, budget, first, replicate_seed):
            break
        with warnings.catch_warnings():  # the loop beats for its trials itself (`heartbeat`)
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
            trial = study.ask()
        trial.set_user_attr(WORKER_ATTR, worker_id())
        twin = duplicate_of(study, trial)
        if twin is not None:
            trial.set_user_attr(DUPLICATE_ATTR, twin)
            study.tell(trial, state=TrialState.FAIL)
            continue
        if budget.trials is not None and over_limit(study, trial, budget.trials):
            trial.set_user_attr(OVER_LIMIT_ATTR, budget.trials)
            study.tell(trial, state=TrialState.FAIL)
            break
        values = trial_values(trial, suggest(trial, space))
        trial_dir = run_dir / "trials" / str(trial.number)
        left = budget.left()
        console.print(f"[bold]trial {trial.number}[/] {_shown(values)}")
        started = time.perf_counter()
        try:
            with heartbeat(study, trial):
                result = train(values, trial_dir, OptunaReporter(trial), left)
        except TunesmithError:
            study.tell(trial, state=TrialState.FAIL)
            raise
        except (MemoryError, RuntimeError, ValueError) as error:
            # A configuration that cannot train (out of memory, a NaN loss) fails its trial,
            # not the search.
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:500])
            trial.set_user_attr(WALL_ATTR, time.perf_counter() - started)
            study.tell(trial, state=TrialState.FAIL)
            console.print(f"[yellow]trial {trial.number} failed[/]: {error}")
            failures += 1
            continue
        failures = 0
        trial.set_user_attr(WALL_ATTR, time.perf_counter() - started)
        trial.set_user_attr("best_epoch", result.best_epoch)
        if result.stopped is not None:
            trial.set_user_attr(STOPPED_ATTR, result.stopped)
        trial.set_user_attr("val", {k: float(v) for k, v in result.best_val.items()})
        score = result.best_val.get(objective.metric)
        if result.stopped == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        elif score is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, float(score))


def _shown(values: Values) -> str:
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={_short(value)}" for key, value in values.items())


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def scored_trials(
    trials: list[optuna.trial.FrozenTrial], objective: Objective
) -> list[optuna.trial.FrozenTrial]:
    """The trials with a finite validation objective: a NaN (a pruned trial that diverged) would
    compare as neither better nor worse than any other, and win by coming first."""
    return [t for t in trials if math.isfinite(t.user_attrs.get("val", {}).get(
        objective.metric, math.nan))]


def best_trial(
    trials: list[optuna.trial.FrozenTrial], objective: Objective
) -> optuna.trial.FrozenTrial:
    """The trial with the best validation objective, completed or pruned (a pruned trial kept
    its best epoch's weights too); on a tie, the earlier one."""
    scored = scored_trials(trials, objective)
    if not scored:
        raise TunesmithError(
            "no trial of the search finished with a validation score",
            field="search",
            fix="look at the trials' errors in the run folder's study, or raise search.budget",
        )
    sign = 1.0 if objective.greater_is_better else -1.0
    return max(scored, key=lambda t: (sign * t.user_attrs["val"][objective.metric], -t.number))
