"""Single-process trainer for the IP Insights model; the distributed job runs it once per rank.

No Spark here. Data arrives already encoded (:class:`EncodedPairs`: hashed entity rows and integer
addresses), so the epoch loop touches only tensors. What a step minimises, the loss over each batch's
real pairs and negatives, is :mod:`ipinsights.train.task`'s; the trainer runs the optimisers, the
epochs and their metrics (:mod:`ipinsights.train.validation`).

Why a custom optimiser for the tables: the entity and IP tables hold millions of rows, of which a
batch touches a few thousand. ``torch.optim.Adam`` over an ``nn.Embedding`` updates (and decays) every
row on every step, which costs time proportional to the whole table. :class:`RowAdam` is Adam applied
to the touched rows only ("lazy" Adam, as TensorFlow's LazyAdam), with the L2 ``weight_decay`` of
``torch.optim.Adam`` applied to those rows. The encoder's dense layers use ``torch.optim.Adam``.

Distributed training plugs in through :class:`Comm`: dense gradients are averaged, and sparse table
gradients are exchanged as (row ids, row gradients), so communication scales with the rows a step
touched, not with the table.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ipinsights.core.config import Hyperparameters, ModelOptions, TrainOptions
from ipinsights.core.entities import ENTITY_FILE, EntityStats
from ipinsights.core.model import IPInsightsModel
from ipinsights.storage.modelfile import load_model, network_table, save_model
from ipinsights.train.comm import Comm, LocalComm
from ipinsights.train.data import BatchSource, EncodedPairs, LabelledPairs
from ipinsights.train.negatives import NegativeSampler
from ipinsights.train.optim import RowAdam, coalesce_rows
from ipinsights.train.task import batch_loss
from ipinsights.train.validation import discriminator_auc, labelled_metrics, shuffled_auc

log = logging.getLogger(__name__)

#: Besides every ``batch_metrics_publish_interval`` batches, rank 0 reports progress at least this often.
PROGRESS_SECONDS = 15.0


class DivergedError(FloatingPointError):
    """The loss or the weights became NaN or infinite (typically a learning rate too large)."""


@dataclass
class EpochMetrics:
    """What one epoch reports (the metrics file holds one of these per epoch)."""

    epoch: int
    loss: float
    accuracy: float
    pairs: int
    seconds: float
    pairs_per_second: float
    discriminator_auc: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """One flat record (``extra`` merged in), as the metrics files and model manifests hold it."""
        d = asdict(self)
        d.update(d.pop("extra"))
        return d

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> EpochMetrics:
        """The inverse of :meth:`as_dict` (e.g. the history of a checkpoint)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in record.items() if k in known},
            extra={k: v for k, v in record.items() if k not in known},
        )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} asked for, but torch sees no CUDA GPU")
    return dev


class Trainer:
    """Runs epochs of negative-sampled, cross-entropy training of an :class:`IPInsightsModel`.

    ``batch_size`` is this process's share of the global ``mini_batch_size`` (the distributed job
    divides it by the world size, as SageMaker splits it across GPUs).
    """

    def __init__(
        self,
        model: IPInsightsModel,
        hp: Hyperparameters,
        options: TrainOptions,
        comm: Comm | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.model = model
        self.hp = hp
        self.options = options
        self.comm: Comm = comm or LocalComm()
        self.device = model.entity_table.device
        self.batch_size = batch_size or hp.mini_batch_size
        self.epoch = 0
        self.dense_params = [p for n, p in model.named_parameters() if n not in model.sparse_parameter_names()]
        self.dense_opt = (
            torch.optim.Adam(self.dense_params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
            if self.dense_params
            else None
        )
        self.entity_opt = RowAdam(model.entity_table.data, hp.learning_rate, hp.weight_decay)
        self.ip_opt = RowAdam(model.ip_table.data, hp.learning_rate, hp.weight_decay)
        # Negatives differ per rank; the data order is the caller's business (see fit's shuffle).
        self.negatives = NegativeSampler(
            hp.random_negative_sampling_rate, hp.shuffled_negative_sampling_rate, options, self.device, self.comm.rank
        )

    # ---- one step --------------------------------------------------------------------------------
    def _step(self, ent_rows: torch.Tensor, ips: torch.Tensor) -> tuple[float, float, int]:
        """One optimisation step on a batch; returns (loss x logits, correct logits, logits)."""
        out = batch_loss(self.model, self.negatives, ent_rows, ips)
        if self.dense_opt is not None:
            self.dense_opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.dense_opt is not None:
            self.comm.allreduce_mean_([_grad(p) for p in self.dense_params])
            self.dense_opt.step()
        world = self.comm.world_size
        for opt, touched in ((self.entity_opt, out.vectors.entity_rows), (self.ip_opt, out.vectors.ip_rows)):
            if world > 1:
                rows, grad = coalesce_rows(*self.comm.allgather_rows(touched.ids, _grad(touched.values)), world)
                opt.step(rows, grad)  # the union of every rank's rows: gather them afresh
            else:
                opt.step(touched.ids, _grad(touched.values), params=touched.values)
        with torch.no_grad():
            correct = ((out.logits > 0) == (out.labels > 0.5)).sum().item()
        return out.loss.item() * out.logits.numel(), correct, out.logits.numel()

    # ---- epochs -------------------------------------------------------------------------------
    def fit(
        self,
        train: EncodedPairs | Callable[[int], BatchSource],
        validation: EncodedPairs | None = None,
        epochs: int | None = None,
        on_epoch_end: Callable[[EpochMetrics], bool | None] | None = None,
        progress: Callable[[str], None] | None = None,
        labelled: LabelledPairs | None = None,
    ) -> list[EpochMetrics]:
        """Train for ``epochs`` (default: the remaining ones up to ``hp.epochs``).

        After each epoch: :func:`~ipinsights.train.validation.discriminator_auc` and ``shuffled_auc`` on
        ``validation``, and ``labelled_metrics`` on ``labelled`` rows (in ``extra``); the last two on a fixed
        sample of at most :data:`~ipinsights.train.validation.VALIDATION_SAMPLE` rows (of each kind).

        ``on_epoch_end`` sees each epoch's metrics; when it returns True, training stops after that epoch.
        Rank 0 logs progress lines (epoch, batch, loss, pairs/s, ETA) and hands each to ``progress``
        too: a rank on an executor sends them to the driver that way (:mod:`ipinsights.train.progress`).

        ``train`` is either the pairs (shuffled here each epoch with a seeded permutation) or a
        function ``epoch -> batch source`` returning that epoch's data already in order: the distributed
        job hands each rank a different shard every epoch, for a shuffle across the whole data set, and
        streams it from its files (:class:`ipinsights.train.stream.ShardStream`).
        """
        end = self.hp.epochs if epochs is None else self.epoch + epochs
        history = []
        while self.epoch < end:
            epoch = self.epoch + 1
            metrics = self._train_epoch(train, epoch, end, progress)
            self.model.eval()
            self._validate(metrics, validation, labelled)
            self.epoch = epoch
            if self.comm.rank == 0:
                _report(progress, "epoch %d done: %s", epoch, _fmt_metrics(metrics))
            history.append(metrics)
            if on_epoch_end is not None and on_epoch_end(metrics):
                break
        self.model.eval()
        return history

    def _epoch_data(
        self, train: EncodedPairs | Callable[[int], BatchSource], epoch: int
    ) -> tuple[BatchSource, Generator[tuple[torch.Tensor, torch.Tensor], None, None]]:
        """This epoch's data and its batches: the source's, in its order, or the pairs in a seeded shuffle."""
        if callable(train):
            data = train(epoch)
            return data, data.batches(self.batch_size, self.device)
        return train, train.batches(self.batch_size, self.device, self._permutation(len(train), epoch))

    def _train_epoch(
        self,
        train: EncodedPairs | Callable[[int], BatchSource],
        epoch: int,
        end: int,
        progress: Callable[[str], None] | None,
    ) -> EpochMetrics:
        """Train one epoch (of ``end``); its metrics, totalled over the ranks (no validation yet)."""
        bs = self.batch_size
        data, batches = self._epoch_data(train, epoch)
        self.negatives.reseed(epoch)
        # Every rank takes the same number of steps; a stream knows its length before it is read.
        n_steps = self.comm.min_int(math.ceil(len(data) / bs))
        self.model.train()
        t0 = time.perf_counter()
        tot = self._run_steps(batches, n_steps, epoch, end, t0, progress)
        batches.close()  # a rank with more data than the others stops reading its stream
        tot_loss, tot_correct, tot_n = self.comm.allreduce_sum(tot).tolist()
        seconds = time.perf_counter() - t0
        pairs = int(self.comm.allreduce_sum(torch.tensor([float(min(len(data), n_steps * bs))]))[0])
        return EpochMetrics(
            epoch=epoch,
            loss=tot_loss / max(tot_n, 1),
            accuracy=tot_correct / max(tot_n, 1),
            pairs=pairs,
            seconds=seconds,
            pairs_per_second=pairs / seconds if seconds > 0 else float("nan"),
        )

    def _run_steps(
        self,
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
        n_steps: int,
        epoch: int,
        end: int,
        t0: float,
        progress: Callable[[str], None] | None,
    ) -> torch.Tensor:
        """``n_steps`` steps; this rank's (loss x logits, correct, logits) totals. Rank 0 reports progress every
        ``batch_metrics_publish_interval`` steps and at least every :data:`PROGRESS_SECONDS`."""
        tot = torch.zeros(3, dtype=torch.float64)  # loss*n, correct, n
        win = np.zeros(3)
        bar = self._progress(n_steps, epoch)
        last_report = t0
        for step in range(n_steps):
            loss_sum, correct, n = self._step(*next(batches))
            win += (loss_sum, correct, n)
            publish = (step + 1) % self.hp.batch_metrics_publish_interval == 0 or step + 1 == n_steps
            if self.comm.rank == 0 and (publish or time.perf_counter() - last_report >= PROGRESS_SECONDS):
                last_report = time.perf_counter()
                self._report_steps(progress, epoch, end, step + 1, n_steps, win, last_report - t0)
            if publish:
                tot += torch.as_tensor(win)
                win[:] = 0
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return tot

    def _report_steps(
        self,
        progress: Callable[[str], None] | None,
        epoch: int,
        end: int,
        done_steps: int,
        n_steps: int,
        window: np.ndarray,
        elapsed: float,
    ) -> None:
        """A progress line: the loss and accuracy of the steps since the last published window, rate, ETA."""
        # Steps are in lockstep across ranks: this rank's rate times the world is the job's.
        done = done_steps * self.batch_size * self.comm.world_size
        left = (n_steps - done_steps + (end - epoch) * n_steps) * elapsed / done_steps
        n = max(window[2], 1)
        line = "epoch %d batch %d/%d: loss=%.4f accuracy=%.4f pairs/s=%.0f ETA %s"
        rate = done / max(elapsed, 1e-9)
        _report(progress, line, epoch, done_steps, n_steps, window[0] / n, window[1] / n, rate, _duration(left))

    def _validate(self, metrics: EpochMetrics, validation: EncodedPairs | None, labelled: LabelledPairs | None) -> None:
        """Add the validation metrics of the model as it is now to ``metrics``."""
        if validation is not None and len(validation):
            metrics.discriminator_auc = discriminator_auc(self.model, validation)
            metrics.extra["shuffled_auc"] = shuffled_auc(self.model, validation)
        if labelled is not None and len(labelled):
            metrics.extra.update(labelled_metrics(self.model, labelled))

    def check_finite(self, m: EpochMetrics) -> None:
        """Stop on a non-finite loss or weights, before the epoch is checkpointed or the model saved.

        Every rank reaches the same verdict without another collective: the loss is the all-reduced
        epoch total and the weights are replicas, so no rank is left waiting in a collective.
        """
        bad = [name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if math.isfinite(m.loss) and not bad:
            return
        what = f"loss={m.loss}" + (f", non-finite weights in {', '.join(bad)}" if bad else "")
        raise DivergedError(
            f"diverged at epoch {m.epoch}: {what} (learning_rate={self.hp.learning_rate}); nothing of this epoch"
            " was checkpointed or saved: resume from the last checkpoint with a lower learning_rate"
        )

    def _permutation(self, n: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.options.seed, epoch]).permutation(n)

    def _progress(self, total: int, epoch: int):
        want = self.options.progress_bar
        if self.comm.rank != 0 or want == "off" or (want == "auto" and not sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=f"epoch {epoch}", unit="batch", leave=False, file=sys.stderr)

    # ---- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, the optimisers and the epoch (the negatives' sampler is
        reseeded per epoch)."""
        return {
            "model": self.model.state_dict(),
            "entity_opt": self.entity_opt.state_dict(),
            "ip_opt": self.ip_opt.state_dict(),
            "dense_opt": self.dense_opt.state_dict() if self.dense_opt is not None else {},
            "epoch": torch.tensor(self.epoch),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.entity_opt.load_state_dict(state["entity_opt"])
        self.ip_opt.load_state_dict(state["ip_opt"])
        if self.dense_opt is not None and state["dense_opt"]:
            self.dense_opt.load_state_dict(state["dense_opt"])
        # An older checkpoint's "generator" entry is ignored: negatives are reseeded per epoch (NegativeSampler).
        self.epoch = int(state["epoch"])


def _grad(t: torch.Tensor) -> torch.Tensor:
    """``t``'s gradient after ``loss.backward()``: every tensor asked about here took part in the loss."""
    grad = t.grad
    assert grad is not None, "a trained tensor took no part in the loss"
    return grad


def _report(progress: Callable[[str], None] | None, msg: str, *args: Any) -> None:
    """Log a progress line and hand it to ``progress`` (rank 0's link to the driver), if any."""
    log.info(msg, *args)
    if progress is not None:
        progress(msg % args)


def _duration(seconds: float) -> str:
    """``3725`` -> ``1h02m05s``: an ETA a person reads at a glance."""
    s = round(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m{s % 60:02d}s" if h else f"{m}m{s % 60:02d}s"


def _fmt_metrics(m: EpochMetrics) -> str:
    auc = "" if m.discriminator_auc is None else f" discriminator_auc={m.discriminator_auc:.4f}"
    if "shuffled_auc" in m.extra:
        auc += f" shuffled_auc={m.extra['shuffled_auc']:.4f}"
    return (
        f"loss={m.loss:.4f} accuracy={m.accuracy:.4f}{auc} pairs={m.pairs} "
        f"seconds={m.seconds:.1f} pairs/s={m.pairs_per_second:,.0f}"
    )


def build_model(
    hp: Hyperparameters, opts: ModelOptions, seed: int, device: torch.device | str = "cpu"
) -> IPInsightsModel:
    """A freshly initialised model (seeded) on ``device``."""
    g = torch.Generator().manual_seed(seed)
    model = IPInsightsModel(hp, opts)
    model.reset_parameters(generator=g)
    model = model.to(device)
    if opts.asn_table:
        model.attach_networks(network_table(opts.asn_table))
    return model


def warm_start_from(model: IPInsightsModel, path: str | Path) -> None:
    """Load an earlier model's weights into ``model``: the same shape and hash space are required."""
    old = load_model(path)
    keys = ("num_entity_vectors", "vector_dim", "num_ip_encoder_layers")
    mine = {k: getattr(model.hp, k) for k in keys}
    theirs = {k: getattr(old.hyperparameters, k) for k in keys}
    # Where the ip2asn table is, is no part of the hash space (AS rows are hashed AS numbers): yesterday's
    # model, trained with yesterday's table (``asn_table: auto``), warm-starts a run with today's.
    tables = bool(old.options.asn_table) == bool(model.opts.asn_table)
    if mine != theirs or not tables or replace(old.options, asn_table=model.opts.asn_table) != model.opts:
        raise ValueError(
            f"--warm-start {path}: the model's shape or hash space differs "
            f"({theirs}, {old.options}) from this run's ({mine}, {model.opts})"
        )
    model.load_state_dict(old.model.state_dict())


@dataclass
class TrainResult:
    """A trained model, its per-epoch metrics (a resumed run's earlier epochs first) and whether a
    callback stopped it before ``hp.epochs``."""

    model: IPInsightsModel
    history: list[EpochMetrics]
    stopped: bool = False


#: After every epoch: the trainer and the history so far (this epoch last); returning True stops training.
EpochCallback = Callable[[Trainer, list[EpochMetrics]], bool | None]


def train_model(
    hp: Hyperparameters,
    model_options: ModelOptions,
    options: TrainOptions,
    train: EncodedPairs | Callable[[int], BatchSource],
    validation: EncodedPairs | None = None,
    *,
    comm: Comm | None = None,
    warm_start: str | Path | None = None,
    restore: Callable[[Trainer], list[EpochMetrics]] | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: Callable[[str], None] | None = None,
    history: list[EpochMetrics] | None = None,
    model_dir: str | Path | None = None,
    fence: Callable[[], None] | None = None,
    entity_stats: EntityStats | bytes | str | None = None,
    config: Mapping[str, Any] | None = None,
    manifest: Mapping[str, Any] | None = None,
    labelled: LabelledPairs | None = None,
) -> TrainResult:
    """The one way a model is trained and saved: the CLI, each distributed rank and each tuning trial.

    Builds a fresh model (seeded: the same inputs give the same model), optionally loads the weights
    of ``warm_start``, lets ``restore`` load a checkpoint into the trainer (it returns the epochs
    already trained), trains the remaining epochs of ``hp.epochs`` (``train``: the pairs, or
    ``epoch -> that epoch's pairs`` for a rank's shard; see :meth:`Trainer.fit`) with
    ``discriminator_auc`` and ``shuffled_auc`` on ``validation`` (and the per-kind metrics on ``labelled``
    validation rows), and calls ``on_epoch_end`` after every epoch (and
    ``progress`` with each of rank 0's progress lines).

    ``history`` (default: a new list) receives every epoch as it ends, so a caller still has them when
    training raises. With a ``comm``, each epoch also records the communication cost so far and the
    global ``mini_batch_size`` is split across the ranks. Rank 0 saves the model to ``model_dir``
    (when given) with the entity stats (or the path or URI of their file), the resolved ``config`` and
    a training record: the epochs, the pair count (for in-memory pairs) and ``manifest``, read at save
    time so that a callback may still change it. ``fence`` runs right before the model is saved (the
    run's lease renewed: it raises when another run took the output over).
    """
    if not callable(train) and len(train) == 0:
        raise ValueError("no training pairs")
    torch.manual_seed(options.seed)
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    record_comm = comm is not None
    comm = comm or LocalComm()
    if hp.mini_batch_size % comm.world_size:
        log.warning("mini_batch_size=%d is not a multiple of %d ranks", hp.mini_batch_size, comm.world_size)
    model = build_model(hp, model_options, options.seed, resolve_device(options.device))  # same start on every rank
    if warm_start is not None:
        warm_start_from(model, warm_start)
    trainer = Trainer(model, hp, options, comm=comm, batch_size=max(1, hp.mini_batch_size // comm.world_size))
    history = [] if history is None else history
    if restore is not None:
        history.extend(restore(trainer))
    stopped = False

    def epoch_end(m: EpochMetrics) -> bool:
        nonlocal stopped
        if record_comm:
            m.extra["comm_seconds"] = comm.stats.seconds
            m.extra["comm_bytes"] = float(comm.stats.bytes)
        history.append(m)  # the diverged epoch too: a caller keeps its record
        trainer.check_finite(m)
        stopped = bool(on_epoch_end(trainer, history)) if on_epoch_end is not None else False
        return stopped

    trainer.fit(train, validation, on_epoch_end=epoch_end, progress=progress, labelled=labelled)
    if model_dir is not None and comm.rank == 0:
        training: dict[str, Any] = {"epochs": [m.as_dict() for m in history]}
        if not callable(train):
            training["pairs"] = len(train)
        training.update(manifest or {})
        if isinstance(entity_stats, EntityStats):
            entity_stats = entity_stats.to_bytes()
        extra = {ENTITY_FILE: entity_stats} if entity_stats is not None else None
        if fence is not None:
            fence()
        save_model(model, model_dir, training=training, config=config, extra_files=extra)
    return TrainResult(model=model, history=history, stopped=stopped)
