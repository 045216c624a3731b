"""A real scikit-learn estimator with n_jobs=-1 leases through the backend."""

from __future__ import annotations

import os

import joblib  # type: ignore[import-untyped]  # joblib ships no type hints
import pytest

from tests.support.daemons import DaemonHandle
from tests.support.pools import loky_workers

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import cross_val_score  # noqa: E402


def _grants(d: DaemonHandle) -> list[tuple[str, int]]:
    return [
        (e["kind"], e["workers"])
        for e in d.events("grant")
        if e.get("job") == "supervisord-batt" and e.get("pid") == os.getpid()
    ]


def test_cross_val_score_with_n_jobs_minus_one_leases_processes(batt: DaemonHandle) -> None:
    x, y = make_classification(n_samples=300, n_features=8, random_state=0)
    with joblib.parallel_config(backend="sequential"):
        expected = cross_val_score(LogisticRegression(), x, y, cv=4, n_jobs=1)
    got = cross_val_score(LogisticRegression(), x, y, cv=4, n_jobs=-1)
    assert list(got) == list(expected)
    want = min(joblib.cpu_count(), 3)
    assert _grants(batt) == [("process", want)], batt.log_text()[-3000:]
    # its pool is kept idle with its lease for the next call (given back at teardown)
    assert [(x["kind"], x["workers"]) for x in batt.status()["leases"]] == [("process", want)]
    assert len(loky_workers()) == want


def test_random_forest_prefers_threads_and_leases_threads(batt: DaemonHandle) -> None:
    x, y = make_classification(n_samples=200, n_features=6, random_state=0)
    forest = RandomForestClassifier(n_estimators=12, random_state=0, n_jobs=-1).fit(x, y)
    alone = RandomForestClassifier(n_estimators=12, random_state=0, n_jobs=1).fit(x, y)
    assert (forest.predict_proba(x) == alone.predict_proba(x)).all()
    kinds = {kind for kind, _ in _grants(batt)}
    assert kinds == {"thread"}, batt.log_text()[-3000:]
    assert batt.status()["leases"] == []
