"""Trial records and the results table (SageMaker's tuner analytics columns); the best trial."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from ipinsights.storage.files import delete_uri
from ipinsights.tune.config import FAILED, METRICS

log = logging.getLogger(__name__)


@dataclass
class TrialRecord:
    """One row of the results table."""

    number: int
    params: dict[str, Any]
    status: str
    objective: float | None
    seconds: float
    epochs: int
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    model_dir: str | None = None
    start: float | None = None
    end: float | None = None
    worker: str | None = None
    metric: str = "discriminator_auc"  # the objective's validation metric

    @property
    def aucs(self) -> list[float]:
        """The objective metric of each epoch (every metric is an AUC)."""
        return [h[self.metric] for h in self.history if h.get(self.metric) is not None]


def record_of(result: Mapping[str, Any], params: dict[str, Any], metric: str = "discriminator_auc") -> TrialRecord:
    history = list(result.get("history") or [])
    status = result["status"]
    aucs = [h.get(metric) for h in history]
    objective = aucs[-1] if status != FAILED and aucs and aucs[-1] is not None else None
    return TrialRecord(
        number=int(result["number"]),
        params=params,
        status=status,
        objective=objective,
        seconds=float(result.get("seconds") or 0.0),
        epochs=len(history),
        error=result.get("error"),
        history=history,
        model_dir=result.get("model_dir") if status != FAILED else None,
        start=result.get("start"),
        end=result.get("end"),
        worker=result.get("worker"),
        metric=metric,
    )


def drop_model(rec: TrialRecord) -> None:
    if rec.model_dir:
        delete_uri(rec.model_dir)
        rec.model_dir = None


def best_record(records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The trial with the highest objective (Completed or Stopped; the earliest on a tie)."""
    ok = [r for r in records if r.status != FAILED and r.objective is not None]
    return max(ok, key=lambda r: (r.objective, -r.number)) if ok else None


def results_frame(records: Sequence[TrialRecord], param_names: Sequence[str]) -> pd.DataFrame:
    """One row per trial, like SageMaker's ``HyperparameterTuningJobAnalytics(...).dataframe()``."""
    import pandas as pd

    def ts(t: float | None):
        return pd.Timestamp(t, unit="s", tz="UTC") if t else pd.NaT

    rows = []
    for r in records:
        row: dict[str, Any] = {"TrialNumber": r.number, "TrainingJobName": f"trial-{r.number:03d}"}
        row.update({name: r.params.get(name) for name in param_names})
        row.update(
            FinalObjectiveValue=r.objective if r.objective is not None else float("nan"),
            # Every metric of the last epoch, so the table shows why the best trial won (and where it did not).
            **{m: (r.history[-1].get(m) if r.history else None) for m in METRICS},
            TrainingJobStatus=r.status,
            TrainingElapsedTimeSeconds=round(r.seconds, 3),
            EpochsRun=r.epochs,
            TrainingStartTime=ts(r.start),
            TrainingEndTime=ts(r.end),
            FailureReason=r.error or "",
        )
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    """The results table as text (times left out: they do not fit a terminal)."""
    import pandas as pd

    shown = table.drop(columns=["TrainingStartTime", "TrainingEndTime", "TrainingJobName"], errors="ignore")
    shown = shown.assign(FailureReason=shown["FailureReason"].str.slice(0, 60))
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_colwidth", 60):
        return shown.to_string(index=False, float_format=lambda v: f"{v:.6g}")
