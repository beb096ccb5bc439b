"""``dstune dashboard``: optuna-dashboard, serving the store in use.

dstune's store is an ordinary Optuna storage, so optuna-dashboard shows every
iteration's study live: trials as they finish, the Pareto front of samples/s
against peak memory, parameter importances, each trial's parameters and user
attributes.  ``dstune report`` is the other view: one offline HTML file with
what Optuna has no place for (the check, the decision, the environment diff,
the memory model, the history across iterations).  This module only finds
the store (never creating one), names the workload's studies and their
addresses, and starts the server (the optional extra ``dstune[dashboard]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from dstune.errors import UsageError

from .records import iterations_of

if TYPE_CHECKING:
    from dstune.store import Store


def study_links(store: Store, workload: str | None, host: str, port: int) -> list[str]:
    """One line per study of ``workload`` (every study without one): its name and its page's address."""
    storage = store.optuna_storage()
    names = ([it.study_name for it in iterations_of(store, workload)] if workload
             else [s.study_name for s in storage.get_all_studies()])
    lines = []
    for name in names:
        try:
            study_id = storage.get_study_id_from_name(name)
        except KeyError:  # an iteration that ended before its study was made
            continue
        lines.append(f"{name}: http://{host}:{port}/dashboard/studies/{study_id}")
    return lines


def serve(store: Store, workload: str | None, host: str, port: int, say: Callable[[str], None]) -> None:
    """Name the studies, then serve optuna-dashboard on the store until interrupted."""
    try:
        import optuna_dashboard
    except ImportError:
        raise UsageError("optuna-dashboard is not installed. Install it with: pip install 'dstune[dashboard]' "
                         "(or pip install optuna-dashboard).") from None
    links = study_links(store, workload, host, port)
    say(f"optuna-dashboard on {store.shown_url}: http://{host}:{port}/dashboard (Ctrl-C stops it)")
    for line in links:
        say(f"  {line}")
    optuna_dashboard.run_server(store.optuna_storage(), host=host, port=port)
