"""A whole job inside one Ray Train run: every round, the final phase and the test, per worker.

Each worker reads its share of the train and val splits once (pipelines/data/share.py) and keeps
its model on its device, wrapped in DDP once, for the whole job. A round trains the epochs
the policy plans, validates, and asks the policy what to add (pipelines/selection/strategies.py):
the pool scan and the selections run here too, each rank on its own rows, and every rank applies
the same additions to its replica of the run state. No rows move between workers.

Steps stay equal across ranks: each epoch every rank walks a seeded permutation of its rows,
padded by wrap-around to the longest rank's length (in the run's last phase, only the whole
steps `strategy.budget` still pays for: the padding cannot carry a run past it). Each step's
loss comes from `training.loss.batch_loss` with a generator seeded by (seed, round, epoch,
step, rank), so the same config gives the same numbers on CPU.

After every epoch and every round the ranks report a Ray Train checkpoint: the model, the
optimiser and schedule mid-phase, where the job stands and the run state (rank 0), and each
rank's manifest rows and policy state (pipelines/manifest.py: no rank holds the whole
manifest). Ray Train restarts a failed worker group from the latest one
(FailureConfig), and a driver started again on the same run directory resumes from it.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch

from raysift.config import JobConfig, from_dict
from raysift.data.ingest import PROVENANCE_DIR
from raysift.data.share import Share, read_share
from raysift.job.messages import EpochDone, Notes, PhaseDone, ScanProgress, append
from raysift.manifest import DROPPED, ShareManifest, write_run_dir
from raysift.operators.contract import ID, LABEL, PIXEL_MAX, X
from raysift.operators.predict import forward_scores
from raysift.run_state import RunState, compute_totals
from raysift.seeding import derive_seed
from raysift.selection.budget import rows_within
from raysift.selection.strategies import (
    Additions,
    Policy,
    RoundView,
    make_strategy,
    rank_batch,
)
from raysift.training.best import BestWeights
from raysift.training.collective import all_max, all_sum, all_sum_int, all_sum_np, sync_buffers
from raysift.training.evaluate import hit_sums, metrics
from raysift.training.loss import batch_generator, batch_loss, sample_losses
from raysift.training.models import build_model, unwrap
from raysift.training.saved import MODEL_FILE, model_spec
from raysift.training.schedule import make_scheduler, move_to, phase_span, planned_train_passes

# One collective a step instead of two, and no gradient copy into the buckets: DDP's default
# sends rank 0's buffers (BatchNorm statistics) before every training forward, which rank 0's
# `sync_buffers` after each epoch does once (training forwards use batch statistics, so the
# numbers are the same); the gradients live in the all-reduce buckets themselves.
DDP_OPTIONS = {"broadcast_buffers": False, "gradient_as_bucket_view": True}
VAL_KEYS = ("val_accuracy", "val_balanced_accuracy", "val_loss")  # a record's validation


@dataclass
class Phase:
    """A round or the final phase, as far as it got: what an epoch checkpoint restores."""

    index: int  # the round's number; the final phase takes the next one
    kind: str  # "round" | "final"
    epochs: int
    next_epoch: int = 0
    train_sample_passes: int = 0
    val_sample_passes: int = 0
    curve: list = field(default_factory=list)  # per validated epoch
    seconds_steps: float = 0.0  # in training steps
    seconds_train: float = 0.0  # in the epochs, validation and checkpoints included
    last_val: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "final" if self.kind == "final" else f"round {self.index}"


def train_job(config: dict) -> None:
    """The Ray Train loop function: `config` holds the job, the data folder, the data's
    classes and shape, and the events file the driver reads."""
    Worker(config).run()


class Worker:
    def __init__(self, config: dict):
        self.job: JobConfig = from_dict(config["job"])
        self.run_dir = Path(config["run_dir"])
        self.events = config["events"]  # rank 0's messages to the driver (job/messages.py)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(self.job.train.threads_per_worker)
        self.device = ray.train.torch.get_device()
        self.num_classes, self.x_shape = config["num_classes"], tuple(config["x_shape"])
        self.x_dtype = np.dtype(config["x_dtype"])
        self.data_dir = Path(config["data_dir"])
        self.train = self._read("train")
        self.val = self._read("val")
        self.manifest = ShareManifest(self.train.ids)
        self.policy: Policy = make_strategy(self.job.strategy.name)
        self.run_state = RunState()
        self.started_at = config["started_at"]  # the driver's time.time() at the session's start
        self.phase: Phase | None = None
        torch.manual_seed(derive_seed(self.job.seed, "init", 0))
        model = build_model(self.job.model, self.x_shape, self.num_classes)
        self.optimizer_state = self.scheduler_state = None
        self.best: BestWeights | None = None  # train.final_keep_best, in the final phase
        resumed = ray.train.get_checkpoint()
        if resumed:
            with resumed.as_directory() as d:
                self._restore(model, Path(d))
        self.clock_origin = run_clock_origin(self.run_state, self.started_at)
        self.model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=DDP_OPTIONS)
        self.per_rank_batch = max(1, self.job.train.batch_size // self.world)
        self.last_checkpoint = time.perf_counter()

    def _read(self, split: str) -> Share:
        """A split's share; generated rows are in train alone (ingest keeps them there)."""
        t = self.job.train
        return read_share(
            self.data_dir / split,
            self.job.seed,
            self.rank,
            self.world,
            self.x_shape,
            t.cache_mb * 2**20,
            t.spill_dir,
            self.x_dtype,
            self.data_dir / PROVENANCE_DIR if split == "train" else None,
        )

    # -- the job ---------------------------------------------------------------------------
    def run(self) -> None:
        state = self.run_state
        if not state.manifest_rows:  # a new run: the first subset
            first = self.policy.initial(self._view(0, self.manifest.pool_rows()))
            taken = self.manifest.add(first.ids, first.reasons, 0)
            state.manifest_rows = all_sum_int(taken)
            self._publish(Notes(first.notes))
        while state.stop_reason is None:
            self._round()
        if (
            not self.policy.single_round
            and self.job.train.final_epochs
            and not any(r["phase"] == "final" for r in state.records)
        ):
            if self.job.train.final_keep_best and self.best is None:  # the last round's model
                self.best = BestWeights()
                last = state.records[-1]
                self.best.offer(
                    {k: last[k] for k in VAL_KEYS}, unwrap(self.model), f"round {last['round']}"
                )
            phase = self.phase or Phase(len(state.records), "final", self.job.train.final_epochs)
            record = self._train_phase(phase)
            if self.best is not None:
                self.best.restore(unwrap(self.model))
                record.update({k: self.best.val[k] for k in VAL_KEYS}, kept=self.best.label)
            record["seconds_end"] = self._clock()
            state.records.append(record)
            self.phase = None
            self._checkpoint({"phase": "final"}, phase_end=True)
            self._publish(PhaseDone(record, [], None))
        if state.test is None:
            test = self._read("test")
            state.test = self._evaluate(test, "test") | {"peak_rss_mb": peak_rss_mb()}
            test.x.close()
            self._checkpoint({"phase": "test", **state.test})

    def _round(self) -> None:
        state, job = self.run_state, self.job
        phase = self.phase or Phase(state.next_round, "round", self.policy.epochs(job))
        started = time.perf_counter() - phase.seconds_train
        record = self._train_phase(phase)
        stop = None if self.policy.single_round else stop_rule(job, state.records + [record])
        added = None
        if stop is None:
            added = self.policy.after_round(
                self._view(phase.index, self.manifest.pool_rows(), self._scan_progress(phase))
            )
            stop = added.stop_reason
            _apply(state, self.manifest, record, added, phase.index)
        state.records.append(record)
        state.next_round = phase.index + 1
        state.stop_reason = stop
        self.phase = None
        record["seconds_round"] = time.perf_counter() - started
        record["seconds_end"] = self._clock()
        self._checkpoint({"phase": "round", "round": phase.index}, phase_end=True)
        self._publish(PhaseDone(record, added.notes if added else [], state.stop_reason))

    def _evaluate(self, share: Share, prefix: str) -> dict:
        """Validation or test in the pool scan's batches (`score.batch_size` over the group): a
        worker's memory is sized by the user's inference batch, not by the split."""
        rows = rank_batch(self.job)
        return evaluate(self.model, share, self.num_classes, self.device, rows, prefix)

    def _view(self, round_index: int, pool: np.ndarray, progress=None) -> RoundView:
        return RoundView(
            job=self.job,
            round_index=round_index,
            num_classes=self.num_classes,
            share=self.train,
            pool=pool,
            score_rows=share_scorer(self.model, self.train, self.device),
            progress=progress,
        )

    # -- training ----------------------------------------------------------------------------
    def _train_phase(self, phase: Phase) -> dict:
        """Train the phase's remaining epochs on the subset, one checkpoint after each."""
        job = self.job
        rows = self.manifest.subset_rows()
        subset_size = all_sum_int(len(rows))
        if all_max(int(not len(rows))):
            raise ValueError(
                f"train.num_workers: a worker holds none of the {subset_size} subset rows; "
                f"use fewer workers for this little data"
            )
        steps_per_epoch = -(-all_max(len(rows)) // self.per_rank_batch)
        optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=job.train.lr, weight_decay=job.train.weight_decay
        )
        phase_steps = phase.epochs * steps_per_epoch
        kind = "phase" if self.policy.single_round else job.train.lr_schedule
        scheduler = make_scheduler(kind, optimizer, job.train.lr, phase_steps)
        span = (0, phase_steps) if kind == "phase" else self._run_span(phase, subset_size)
        if self.optimizer_state is not None:  # restored mid-phase
            optimizer.load_state_dict(self.optimizer_state)
            scheduler.load_state_dict(self.scheduler_state)
            self.optimizer_state = self.scheduler_state = None
        else:
            move_to(scheduler, span[0])
        span = (*span, phase_steps)
        self.phase = phase
        last_phase = self._last_phase(phase)
        while phase.next_epoch < phase.epochs:
            start = time.perf_counter()
            epoch = phase.next_epoch
            left = self._passes_left(phase) if last_phase else None
            cut = self._epoch(phase, rows, optimizer, scheduler, steps_per_epoch, span, left)
            metrics = {"epoch": epoch, "train_sample_passes": phase.train_sample_passes}
            keep_best = self.best is not None and phase.kind == "final"
            if cut:  # the budget is spent: this epoch is the phase's last
                phase.epochs = epoch + 1
                self._publish(Notes([f"{phase.label}: stopped at the budget in epoch {epoch}"]))
            if epoch == phase.epochs - 1 or job.train.val_every_epoch or keep_best:
                val = self._evaluate(self.val, "val")
                if keep_best:
                    self.best.offer(val, unwrap(self.model), f"final epoch {epoch}")
                phase.val_sample_passes += val["val_samples"]
                phase.last_val = val
                phase.curve.append(
                    {
                        "epoch": epoch,
                        "train_sample_passes": phase.train_sample_passes,
                        "val_sample_passes": phase.val_sample_passes,
                        "val_accuracy": val["val_accuracy"],
                        "val_balanced_accuracy": val["val_balanced_accuracy"],
                        "seconds_at": self._clock(),
                    }
                )
                metrics["val_accuracy"] = val["val_accuracy"]
            phase.next_epoch = epoch + 1
            phase.seconds_train += time.perf_counter() - start
            if phase.next_epoch < phase.epochs and self._checkpoint_due():
                start = time.perf_counter()
                self._checkpoint(metrics, optimizer, scheduler)
                phase.seconds_train += time.perf_counter() - start
            self._publish(EpochDone(phase.label, epoch, phase.epochs, metrics.get("val_accuracy")))
        val = phase.last_val
        return {
            "round": phase.index,
            "phase": phase.kind,
            "subset_size": subset_size,
            "epochs": phase.epochs,
            "subset_synthetic": all_sum_int(self.train.count_synthetic(rows)),
            "val_accuracy": val["val_accuracy"],
            "val_balanced_accuracy": val["val_balanced_accuracy"],
            "val_loss": val["val_loss"],
            "curve": phase.curve,
            "train_sample_passes": phase.train_sample_passes,
            "infer_sample_passes": phase.val_sample_passes,
            "hard_found": 0,
            "added": 0,
            "seconds_train": phase.seconds_train,
            "seconds_steps": phase.seconds_steps,
            "seconds_score": 0.0,
            "seconds_score_batches": 0.0,
            "seconds_select": 0.0,
            "seconds_round": phase.seconds_train,
            "peak_rss_mb": peak_rss_mb(),
        }

    def _epoch(
        self,
        phase: Phase,
        rows: np.ndarray,
        optimizer,
        scheduler,
        steps_per_epoch: int,
        span: tuple[int, int, int],
        left: float | None = None,
    ) -> bool:
        """Train one epoch within `left` sample-passes (None: no limit); True when that cut it
        short."""
        job, epoch, b = self.job, phase.next_epoch, self.per_rank_batch
        plan = self.policy.plan_epoch(job, len(rows), phase.index, epoch, phase.epochs)
        length = all_max(len(plan.pick))
        perm = np.random.default_rng(
            derive_seed(job.seed, "epoch", phase.index, epoch, self.rank)
        ).permutation(len(plan.pick))
        steps = -(-length // b)  # the schedule's steps: a cut epoch stops early on its curve
        trained = length if left is None else rows_within(left, self.world, b, length)
        weights = None if plan.weights is None else plan.weights.to(self.device, torch.float32)
        losses_seen = None if weights is None else torch.zeros(len(perm), dtype=torch.float64)
        self.model.train()
        for step in range(-(-trained // b)):
            start = time.perf_counter()
            slots = np.arange(step * b, min((step + 1) * b, trained))
            at = perm[slots % len(perm)]  # wrapped around: every rank takes `trained` rows
            positions = rows[plan.pick[at]]
            x, y = device_batch(self.train, positions, self.device)
            targets = self.train.targets(positions, self.num_classes)
            if targets is not None:
                targets = torch.from_numpy(targets).to(self.device)
            generator = batch_generator(job.seed, phase.index, epoch, step, self.rank, self.device)
            if weights is None:
                loss = batch_loss(self.model, x, y, self.num_classes, job, generator, targets)
            else:
                losses = sample_losses(self.model, x, y, job, generator, targets)
                keep = slots < len(perm)  # each picked row's one entry that is not padding
                losses_seen[at[keep]] = (
                    losses.detach()[torch.from_numpy(keep).to(self.device)].double().cpu()
                )
                loss = (weights[torch.from_numpy(at).to(self.device)] * losses).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            advance_schedule(scheduler, epoch, step, steps, steps_per_epoch, span)
            phase.seconds_steps += time.perf_counter() - start
        phase.train_sample_passes += trained * self.world  # padded rows are trained on too
        sync_buffers(self.model)
        if weights is not None:
            self.policy.end_epoch(plan.pick, losses_seen)
        return trained < length

    def _run_span(self, phase: Phase, subset_size: int) -> tuple[int, int]:
        """The stretch of the run's schedule (grid steps) this phase covers: its planned
        share of the run's training passes, the rounds planned in full
        (pipelines/training/schedule.py).
        """
        job, s = self.job, self.job.strategy
        n = all_sum_int(len(self.train))
        initial, increment = self.policy.planned_sizes(job, n, self.num_classes)
        final_epochs = job.train.final_epochs
        total = planned_train_passes(
            n, initial, increment, s.max_rounds, self.policy.epochs(job), final_epochs
        )
        done = sum(r["train_sample_passes"] for r in self.run_state.records)
        return phase_span(done, subset_size * phase.epochs, total, self._last_phase(phase))

    def _last_phase(self, phase: Phase) -> bool:
        """Whether only the test comes after `phase`: the final phase, or the last round
        where there is none."""
        planned_rounds = self.job.strategy.max_rounds
        return phase.kind == "final" or (
            phase.index >= planned_rounds - 1 and not self.job.train.final_epochs
        )

    def _passes_left(self, phase: Phase) -> float | None:
        """What the budget (`strategy.budget`) leaves for training in the current epoch: less
        what the run and the phase spent, and the validation at the epoch's end."""
        budget = self.job.strategy.budget
        if budget is None:
            return None
        spent = compute_totals(self.run_state.records)["compute"]
        validation = all_sum_int(len(self.val)) / 3
        return (
            budget - spent - phase.train_sample_passes - (phase.val_sample_passes / 3) - validation
        )

    # -- checkpoints and messages ---------------------------------------------------------
    def _checkpoint_due(self) -> bool:
        """Whether an epoch's end makes a checkpoint: the same answer on every rank."""
        due = time.perf_counter() - self.last_checkpoint >= self.job.train.checkpoint_every_s
        return bool(all_max(int(due)))

    def _clock(self) -> float:
        """The run's wall seconds so far: since the driver started it, start-up included, plus
        the time of the sessions before a resume (up to the checkpoint it resumed from)."""
        return time.time() - self.clock_origin

    def _checkpoint(self, metrics: dict, optimizer=None, scheduler=None, phase_end=False) -> None:
        """Report `metrics` with a checkpoint of everything a restart needs: rank 0's model,
        optimiser and run state, every rank's manifest rows and policy state. At a phase's end
        rank 0 then brings the run directory up to that checkpoint."""
        self.last_checkpoint = time.perf_counter()
        state = self.run_state
        state.seconds, state.clock_origin = self._clock(), self.clock_origin
        policy_state = self.policy.state_dict()
        with tempfile.TemporaryDirectory() as d:
            if self.rank == 0:
                torch.save(
                    {
                        "model": unwrap(self.model).state_dict(),
                        "spec": model_spec(self.job.model, self.num_classes, self.x_shape),
                        "optimizer": optimizer.state_dict() if optimizer else None,
                        "scheduler": scheduler.state_dict() if scheduler else None,
                        "phase": asdict(self.phase) if self.phase else None,
                        "best": self.best.state_dict() if self.best else None,
                    },
                    os.path.join(d, MODEL_FILE),
                )
                state.save(Path(d))
            self.manifest.write(Path(d), self.rank)
            if policy_state:
                torch.save(policy_state, os.path.join(d, f"policy_rank{self.rank}.pt"))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        if phase_end:
            all_max(0)  # every rank's part is in the checkpoint before rank 0 reads them
            if self.rank == 0:
                with ray.train.get_checkpoint().as_directory() as d:
                    write_run_dir(Path(d), self.run_dir, self.world)

    def _restore(self, model, d: Path) -> None:
        saved = torch.load(d / MODEL_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        self.run_state = RunState.load(d)
        self.manifest.load(d)
        self.phase = Phase(**saved["phase"]) if saved["phase"] else None
        self.optimizer_state, self.scheduler_state = saved["optimizer"], saved["scheduler"]
        if saved.get("best") and self.phase is not None:  # mid final phase: its best so far
            self.best = BestWeights()
            self.best.load_state_dict(saved["best"])
        policy_file = d / f"policy_rank{self.rank}.pt"
        if policy_file.exists():
            self.policy.load_state_dict(torch.load(policy_file, weights_only=True))

    def _publish(self, message) -> None:
        if self.rank == 0:
            append(self.events, message)

    def _scan_progress(self, phase: Phase):
        last = [0.0]

        def show(seen: int, found: int) -> None:
            now = time.perf_counter()
            if now - last[0] >= 1.0:
                last[0] = now
                self._publish(ScanProgress(phase.label, seen, found))

        return show


def run_clock_origin(state: RunState, session_start: float) -> float:
    """The time.time() the run's clock counts from, for a worker starting from `state` in a
    driver session that began at `session_start`: the state's own origin when it was saved in
    this session (a restarted worker group: the clock ran on through the failure), else the
    session's start less the state's reading (a new run, or a resumed one)."""
    if state.clock_origin is not None and state.clock_origin + state.seconds >= session_start:
        return state.clock_origin
    return session_start - state.seconds


def peak_rss_mb() -> int:
    """The largest resident memory any worker has had so far, in MiB (the same on all ranks)."""
    return all_max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


def device_batch(share: Share, positions: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (float32) and labels of the share's rows at `positions`, on `device`: through
    pinned memory to a GPU, so the copy overlaps the work already queued, and 8-bit pixels
    travel as they are stored and are scaled there (a quarter of the bytes to copy)."""
    x = torch.from_numpy(share.x.take(positions))
    y = torch.from_numpy(share.labels[positions].astype(np.int64))
    if torch.device(device).type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
        y = y.pin_memory().to(device, non_blocking=True)
    return (x.float().div_(PIXEL_MAX) if x.dtype == torch.uint8 else x), y


def share_scorer(model, share: Share, device):
    """`score_rows(positions, extra)`: the model's scores of the share's rows (operators/
    predict.py's columns); `extra` None, "embedding", or "x" for the features themselves."""

    def score_rows(positions: np.ndarray, extra: str | None = None) -> dict:
        x, y = device_batch(share, positions, device)
        out = forward_scores(unwrap(model).eval(), x, y, with_embedding=extra == "embedding")
        out[ID] = share.ids[positions]
        out[LABEL] = share.labels[positions]
        if extra == X:
            out[X] = x.cpu().numpy()
        return out

    return score_rows


def _apply(
    state: RunState, manifest: ShareManifest, record: dict, added: Additions, round_index: int
) -> None:
    """Write a round's additions into this rank's manifest rows, the run state and its
    record (counted over every rank: a policy may name only this rank's rows)."""
    record["hard_found"] = added.hard_found
    record["infer_sample_passes"] += added.infer_sample_passes
    record["seconds_score"] = added.seconds_score
    record["seconds_score_batches"] = added.seconds_score_batches
    record["seconds_select"] = added.seconds_select
    dropped = manifest.add(added.dropped, DROPPED, round_index)  # this round's model got them right
    joined = (
        manifest.add(added.ids, added.reasons, round_index + 1) if added.stop_reason is None else 0
    )
    dropped, joined = (int(n) for n in all_sum_np(np.array([dropped, joined])))
    state.manifest_rows += dropped + joined
    record["added"] = joined
    if added.remaining is not None:
        record.update(
            dropped=dropped,
            remaining=sum(added.remaining.values()),
            remaining_per_class={str(c): n for c, n in added.remaining.items()},
        )


def stop_rule(job: JobConfig, records: list) -> str | None:
    """The generic stop rules after a round (target, budget, round cap, patience), or None."""
    s, record = job.strategy, records[-1]
    compute = compute_totals(records)["compute"]
    if s.target_val_accuracy is not None and record["val_accuracy"] >= s.target_val_accuracy:
        return f"val accuracy {record['val_accuracy']:.4f} >= target {s.target_val_accuracy}"
    if s.budget is not None and compute >= s.budget:
        return f"compute {compute:.0f} >= budget {s.budget:.0f}"
    if record["round"] + 1 >= s.max_rounds:
        return f"max_rounds {s.max_rounds} reached"
    if s.patience is not None and _stalled(records, s.patience):
        return f"no val gain in {s.patience} rounds"
    return None


def _stalled(records: list, patience: int) -> bool:
    accs = [r["val_accuracy"] for r in records if r["phase"] == "round"]
    return len(accs) > patience and max(accs[-patience:]) <= max(accs[:-patience])


def advance_schedule(
    scheduler,
    epoch: int,
    step: int,
    steps: int,
    steps_per_epoch: int,
    span: tuple[int, int, int] | None = None,
) -> None:
    """Move the schedule to where a full epoch would be at the same fraction of the epoch.

    A full epoch steps it once per step; an epoch that InfoBatch shortened to `steps` steps
    covers the same stretch of the one-cycle curve, as the InfoBatch authors' recipe does.
    With `span` (start, end, the phase's full steps) the phase's steps are laid onto the
    scheduler's steps start..end: the phase's stretch of the run's schedule.
    """
    target = epoch * steps_per_epoch + (step + 1) * steps_per_epoch // steps
    if span is not None:
        start, end, phase_steps = span
        target = start + (end - start) * target // max(phase_steps, 1)
    move_to(scheduler, target)


def evaluate(model, share: Share, num_classes: int, device, batch_rows: int, prefix: str) -> dict:
    """Accuracy, balanced accuracy (mean recall over the classes present), loss and row count
    over every rank's share: each rank scores its own rows, `batch_rows` at a time, and the
    sums are all-reduced."""
    batches = (
        device_batch(share, np.arange(i, min(i + batch_rows, len(share))), device)
        for i in range(0, len(share), batch_rows)
    )
    return metrics(all_sum(hit_sums(unwrap(model), batches, num_classes)), prefix)
