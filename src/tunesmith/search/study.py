"""The Optuna study a search runs in: its storage, sampler and pruner.

Storage is SQLite in the run folder unless `search.storage` names another: an SQLAlchemy URL
(`postgresql://user@host/db`) that many workers on many machines share, or `journal:PATH`, an
append-only file that processes sharing a file system can use without a database server.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from tunesmith.config import Config, redacted
from tunesmith.errors import TunesmithError
from tunesmith.io import SNAPSHOT_FILE, STUDY_FILE, atomic_write

STARTUP_TRIALS = 5  # TPE's random draws before it models anything
# A PostgreSQL worker's running trial records a heartbeat this often; one silent for the grace
# period is taken for a dead machine's: failed and queued again (`fail_silent_workers_trials`).
HEARTBEAT_S, HEARTBEAT_GRACE_S = 30, 300
CONFIG_ATTR = "tunesmith_config"  # the study's searched config, to refuse a different one
ENDED_ATTR = "search_ended"  # set by the run that chose the final model, when its trials end


def storage_url(config: Config, run_dir: Path) -> str:
    return config.search.storage or f"sqlite:///{run_dir / STUDY_FILE}"


def ended_study(config: Config, run_dir: Path) -> str | None:
    """The run folder of the run whose search ended in the config's shared study, if one did
    (None for a study in the run folder, which a new run starts afresh)."""
    if keeps_its_own_study(config):
        return None
    url = storage_url(config, run_dir)
    store = open_storage(url, source=config.source)
    try:
        study_id = store.get_study_id_from_name(config.search.study or config.name)
    except KeyError:
        return None
    ended = store.get_study_user_attrs(study_id).get(ENDED_ATTR)
    return None if ended is None else str(ended)


def keeps_its_own_study(config: Config) -> bool:
    """The study lives in the run folder's SQLite (no `search.storage` given)."""
    return config.search.storage is None


def snapshot(study: optuna.Study, run_dir: Path) -> Path:
    """Copy a study kept in PostgreSQL or a journal into the run folder's `SNAPSHOT_FILE`
    (SQLite), as it stands now: every worker's trials. The report reads its history from there,
    and the copy outlives the server. Written whole, then renamed into place."""
    path = run_dir / SNAPSHOT_FILE
    atomic_write(path, lambda tmp: optuna.copy_study(
        from_study_name=study.study_name, from_storage=study._storage,
        to_storage=f"sqlite:///{tmp}"))
    return path


def open_storage(url: str, *, source: str) -> optuna.storages.BaseStorage:
    """The storage behind `url`, reached now: a wrong or unreachable URL is a user error."""
    field = "search.storage"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url.removeprefix("journal:")).expanduser()
        if not path.parent.is_dir():
            raise TunesmithError(
                f"the journal's folder {path.parent} does not exist", file=source, field=field,
                fix="create the folder, or point journal:PATH at one that exists",
            )
        if path.is_dir() or not path.name:
            raise TunesmithError(
                f"the journal {path} is a folder, not a file", file=source, field=field,
                fix=f"name a file in it: journal:{path / 'study.log'}",
            )
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except (ValueError, UnicodeDecodeError, OSError) as error:  # JSONDecodeError among them
            raise TunesmithError(
                f"cannot read {path} as an Optuna journal: {_first_line(error)}",
                file=source, field=field,
                fix="point journal:PATH at a journal file tunesmith wrote, or at a new file",
            ) from None
    try:
        return _rdb_storage(url)
    except Exception as error:  # SQLAlchemy raises many kinds: a bad URL, a refused connection
        raise TunesmithError(
            f"cannot open the study storage {redacted(url)}: {_first_line(error)}",
            file=source, field=field,
            fix="check the URL (sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DB or "
            "journal:PATH), that the server is running and reachable, and that its driver is "
            "installed (pip install 'tunesmith[postgres]' for PostgreSQL)",
        ) from None


def _rdb_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Optuna creates its tables on first contact with an empty database; workers started together
    race to do it and all but one hit a duplicate-object error (PostgreSQL's `CREATE TYPE` has no
    IF NOT EXISTS). Once one has made them the others find them, so such an error is retried."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    # SQLite serves one machine, whose dead workers their process ids tell; its writes lock the
    # file, which a heartbeat thread would contend for.
    heartbeats: dict[str, Any] = {} if url.startswith("sqlite") else {
        "heartbeat_interval": HEARTBEAT_S, "grace_period": HEARTBEAT_GRACE_S,
        "heartbeat_stale_trial_callback": _requeue}
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are an experimental argument
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs={"pool_pre_ping": True}, **heartbeats)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    from tunesmith.search.run import requeue

    requeue(study, trial)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def make_sampler(seed: int, kind: str = "tpe") -> optuna.samplers.BaseSampler:
    """Multivariate TPE (parameters modelled jointly), grouped so that conditional parameters
    (LoRA's rank only under LoRA) are modelled among the trials that drew them; or uniform
    random draws (a baseline). Seeded."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # `group` is marked experimental; it has been since 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, n_startup_trials=STARTUP_TRIALS,
            constant_liar=True
        )


class AfterStartup(optuna.pruners.BasePruner):
    """`pruner`'s verdict, once `trials` trials have completed; until then nothing is pruned.

    While the sampler draws at random (its first `STARTUP_TRIALS`), the trials are the yardstick
    the pruner will measure the others by, and it has little to measure them by: successive
    halving promotes the first trials at a rung only if each beats the ones before, so good
    draws that start slowly (a low rate, heavy dropout) are lost to an epoch or two of noise.
    Optuna's median pruner waits for 5 trials for the same reason.

    Wrapped, Hyperband also stops splitting the study for the sampler. Optuna shows TPE only the
    trials of the current trial's Hyperband bracket, so with five brackets TPE draws at random
    until each one holds five trials: about 25 trials in all, most of a short budget (Optuna's
    documentation of `HyperbandPruner` says as much). Here TPE models every finished trial, as
    it does with any other pruner, and Hyperband still prunes within each bracket.
    """

    def __init__(self, pruner: optuna.pruners.BasePruner, *, trials: int) -> None:
        self.pruner, self.trials = pruner, trials

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        # Asked every time, so that successive halving records each rung's value: the first
        # trials are what the later ones are measured against.
        verdict = self.pruner.prune(study, trial)
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return verdict and len(done) >= self.trials


def make_pruner(kind: str, *, max_epochs: int) -> optuna.pruners.BasePruner:
    """Pruning over epochs (the loop reports the validation objective after each one), from the
    end of the sampler's random start."""
    if kind == "none" or max_epochs < 2:
        return optuna.pruners.NopPruner()
    if kind == "successive-halving":
        pruner: optuna.pruners.BasePruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=3)
    else:
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max_epochs, reduction_factor=3)
    return AfterStartup(pruner, trials=STARTUP_TRIALS)


def open_study(
    config: Config, run_dir: Path, *, searched: dict[str, Any], direction: str,
    max_epochs: int, seed: int | None = None,
) -> optuna.Study:
    """Create the study, or join it when it exists with the same searched config; one that
    exists with another is refused, naming what differs. The sampler draws from `seed`
    (default: the config's); workers sharing a study need seeds of their own, or each would draw
    the very trials the others draw."""
    url = storage_url(config, run_dir)
    study_name = config.search.study or config.name
    store = open_storage(url, source=config.source)
    seed = config.seed if seed is None else seed
    study = optuna.create_study(
        storage=store, study_name=study_name, load_if_exists=True,
        direction="maximize" if direction == "maximize" else "minimize",
        sampler=make_sampler(seed, config.search.sampler),
        pruner=make_pruner(config.search.pruner, max_epochs=max_epochs),
    )
    # A sampler seeded as the one that drew the study's trials so far would draw them again (a
    # resumed run's first random draw is the killed run's first): it starts where they end.
    existing = len(study.get_trials(deepcopy=False))
    if existing:
        study.sampler = make_sampler((seed + existing) % 2**32, config.search.sampler)
    known = study.user_attrs.get(CONFIG_ATTR)
    if known is None:
        study.set_user_attr(CONFIG_ATTR, searched)
    elif differences := _differences(known, searched):
        raise TunesmithError(
            f"study {study_name!r} in {redacted(url)} was made by another config "
            f"({'; '.join(differences[:5])})",
            file=config.source, field="search.study",
            fix="use the study's config, or give another study name (search.study or --study)",
        )
    return study


def _differences(known: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """What differs between the study's signature and this config's, a line per setting (per
    searched parameter of the space, per fixed value). A part the study lacks was not recorded
    by the tunesmith that made it, and is not compared."""
    found = []
    for key in sorted(known):
        ours, theirs = here.get(key), known[key]
        if isinstance(ours, dict) and isinstance(theirs, dict):
            part = "" if key == "settings" else f"{key} "
            found += [f"{part}{name}: {theirs.get(name, '(unset)')} in the study, "
                      f"{ours.get(name, '(unset)')} here"
                      for name in sorted(set(theirs) | set(ours))
                      if theirs.get(name) != ours.get(name)]
        elif ours != theirs:
            found.append(f"{key}: {theirs!r} in the study, {ours!r} here")
    return found
