"""The model runner shared by the Ray Data inference actor and the Serve model replica.

Windows from many documents are pooled, sorted by length, run in micro-batches of at most
`batch_size` sequences and `max_batch_tokens` padded tokens, padded only up to a multiple of
`pad_multiple` (8), and scattered back in input order. Batches are cut where the lengths
jump: on a CPU where the next sequence would lower the batch's tokens per second (padding
against the measured cost of one more call), in whole multiples of 16 rows, on a GPU where
padding would pass 10%. A micro-batch that runs out of memory is split and the rest
re-planned under a lower budget; one that fails otherwise is retried one sequence at a time,
so one poisoned input costs one row an error instead of failing its neighbours.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from pipeline import heap
from pipeline.encode import Encoded, Framing, framing_of, window_spans
from pipeline.row_errors import failed

if TYPE_CHECKING:
    from pipeline.config import RuntimeConfig
    from pipeline.models import LoadedModel

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's out-of-memory error (or a CPU allocation failure): the batch was too big, not bad."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@dataclass
class RunStats:
    """Work counters: padding efficiency = real_tokens / padded_tokens."""

    sequences: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    forward_s: float = 0.0
    forward_cpu_s: float = 0.0  # ModelRunner.cpu_clock in forwards: below forward_s = starved of CPU
    oom_splits: int = 0

    def add(self, other: RunStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def since(self, before: RunStats) -> dict[str, float]:
        """What was counted after `before` was taken: one batch's share, for the run report."""
        names = ("sequences", "real_tokens", "padded_tokens", "forward_s", "forward_cpu_s", "oom_splits")
        return {n: getattr(self, n) - getattr(before, n) for n in names}

    def as_dict(self) -> dict[str, float]:
        eff = self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0
        return {
            "sequences": self.sequences,
            "batches": self.batches,
            "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens,
            "padding_efficiency": round(eff, 4),
            "forward_s": round(self.forward_s, 3),
            "forward_cpu_s": round(self.forward_cpu_s, 3),
            "oom_splits": self.oom_splits,
        }


# On CUDA a batch is closed early when its padding efficiency (real / padded tokens) would fall
# under MIN_EFFICIENCY, but only once it holds MIN_TOKENS of work: a GPU wants big batches.
CUDA_CUT = (0.9, 8192)  # (MIN_EFFICIENCY, MIN_TOKENS)
# On a CPU time grows with padded tokens plus a fixed cost per call (Python and kernel launch
# overhead), measured in tokens it is worth: small for BERT-base, large for tiny models on short
# texts. Until measured (ForwardCost), this guess.
CPU_OVERHEAD_TOKENS = 32.0
# CPU micro-batches take whole multiples of this many rows, or under it a power of two (a
# block's tail too, see cpu_rows), and widths a multiple of 8: a night then runs ~100 distinct
# shapes instead of thousands (969 after 120k short documents, still growing), so oneDNN's
# per-shape primitive cache (1,024 entries) keeps hitting instead of building primitives, and
# fragmenting the heap, all night. Each new shape costs the process ~2-3 MB that stays.
# Measured on 120k short documents, tiny models, in-process: 14% faster, and the peak
# anonymous memory flat at ~590 MB (670 rising to 806 MB without), though padding efficiency
# drops 0.93 -> 0.84. Tails of any row count (before cpu_rows): 632 -> 742 MB over 100k
# documents, 150 shapes; with it 576 -> 601 MB, 88 shapes, same speed.
CPU_ROW_MULTIPLE = 16


def cpu_rows(rows: int) -> int:
    """The most rows at or under `rows` that a CPU batch may have: a whole multiple of
    CPU_ROW_MULTIPLE, or under it a power of two. A block's tail of 15 rows runs as 8+4+2+1."""
    if rows >= CPU_ROW_MULTIPLE:
        return rows - rows % CPU_ROW_MULTIPLE
    return 1 << (rows.bit_length() - 1)


class ForwardCost:
    """Forward seconds ~= overhead + per_token * padded tokens, fitted on recent batches.

    Sums decay so the fit follows the machine (other processes, thermal state) as it changes.
    """

    def __init__(self, decay: float = 0.99) -> None:
        self.decay = decay
        self.n = self.sx = self.sy = self.sxx = self.sxy = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        d = self.decay
        self.n = self.n * d + 1
        self.sx = self.sx * d + tokens
        self.sy = self.sy * d + seconds
        self.sxx = self.sxx * d + tokens * tokens
        self.sxy = self.sxy * d + tokens * seconds

    def overhead_tokens(self, default: float) -> float:
        """How many padded tokens cost as much as one call's fixed overhead (default until known)."""
        if self.n < 8:
            return default
        var = self.n * self.sxx - self.sx * self.sx
        if var <= 1e-6 * self.n * self.sxx:  # every batch the same size: no slope to fit
            return default
        slope = (self.n * self.sxy - self.sx * self.sy) / var
        overhead = (self.sy - slope * self.sx) / self.n
        if slope <= 0 or overhead <= 0:
            return default
        return overhead / slope


class ModelRunner:
    """Runs one model over many token sequences: length-sorted, fixed-size, lightly padded batches."""

    def __init__(
        self,
        model: Any,
        *,
        batch_size: int,
        pad_id: int,
        pad_multiple: int | None,
        max_length: int,
        max_batch_tokens: int = 65_536,
        output: Callable[[Any, Any], Any] | None = None,
        per_token: bool = False,
    ) -> None:
        import torch

        self.model = model
        # What a forward returns, from the model's output and the attention mask: the kind's
        # tensor, reduced where the model runs (embeddings are pooled there, so only [B, dim]
        # leaves a GPU); [B, L, C] per token, or [B, C] per sequence.
        self.output = output or (lambda out, mask: out.logits)
        self.per_token = per_token
        self.batch_size = batch_size
        # Lowered below a batch that ran out of memory, so the next ones do not repeat it.
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = pad_id
        self.max_length = max_length
        # a transformers model or pipeline.ort_engine.OrtModel has .device; a bare nn.Module, its parameters
        device = getattr(model, "device", None)
        self.device = device if device is not None else next(model.parameters()).device
        # Tensor cores want multiples of 8; a CPU wants few distinct shapes (CPU_ROW_MULTIPLE).
        self.pad_multiple = pad_multiple or 8
        self.cost = ForwardCost()
        self.stats = RunStats()
        # The CPU time a forward costs: the whole process's, which its intra-op threads share,
        # unless the forward has a thread of its own that does all its CPU work (ModelThreads).
        self.cpu_clock = time.process_time
        self._torch = torch

    def padded_length(self, longest: int) -> int:
        m = self.pad_multiple
        return min(-(-longest // m) * m, max(self.max_length, longest))

    def plan(self, sorted_lengths: np.ndarray, order: np.ndarray) -> list[np.ndarray]:
        """Cut length-sorted (longest first) sequences into micro-batches of at most `batch_size`."""
        if self.device.type == "cuda":
            return self._plan_gpu(sorted_lengths, order)
        return self._plan_cpu(sorted_lengths, order)

    def _cap(self, width: int) -> int:
        """Most sequences of this padded width in one batch: batch_size, and the token budget
        (a sequence longer than the budget still runs, alone)."""
        return max(1, min(self.batch_size, self.max_batch_tokens // width))

    def _plan_gpu(self, sorted_lengths: np.ndarray, order: np.ndarray) -> list[np.ndarray]:
        """Close a batch when the next (shorter) sequence would push its padding efficiency
        under MIN_EFFICIENCY, once it already holds MIN_TOKENS of work: at a jump from
        512-token windows to 40-token ones, the short ones start a batch of their own."""
        min_efficiency, min_tokens = CUDA_CUT
        batches = []
        n, i = len(order), 0
        while i < n:
            width = self.padded_length(int(sorted_lengths[i]))
            cap = self._cap(width)
            total, j = int(sorted_lengths[i]), i + 1
            while j < n and j - i < cap:
                grown = total + int(sorted_lengths[j])
                if grown < min_efficiency * (j - i + 1) * width and (j - i) * width >= min_tokens:
                    break
                total, j = grown, j + 1
            batches.append(order[i:j])
            i = j
        return batches

    def _plan_cpu(self, sorted_lengths: np.ndarray, order: np.ndarray) -> list[np.ndarray]:
        """Add the next sequence while it raises the batch's real tokens per second.

        A batch of k sequences, width W and R real tokens takes ~ (c + k*W) token-times, c the
        call overhead in tokens. Adding a sequence of length l pays when
        (R + l) / (c + (k+1) W) > R / (c + k W), i.e. l * (c + k W) > R * W.
        """
        c = self.cost.overhead_tokens(CPU_OVERHEAD_TOKENS)
        lengths = sorted_lengths.tolist()
        batches = []
        n, i = len(order), 0
        while i < n:
            width = self.padded_length(lengths[i])
            cap = self._cap(width)
            real, j = lengths[i], i + 1
            while j < n and j - i < cap and lengths[j] * (c + (j - i) * width) > real * width:
                real += lengths[j]
                j += 1
            rows = cpu_rows(j - i)  # the rest starts the next batch
            batches.append(order[i : i + rows])
            i += rows
        return batches

    def run(self, seqs: list[np.ndarray]) -> tuple[list[np.ndarray | None], list[str | None]]:
        """Logits per sequence (fp32; [C] or [len, C]) in input order, and an error per sequence."""
        n = len(seqs)
        results: list[np.ndarray | None] = [None] * n
        errors: list[str | None] = [None] * n
        if n == 0:
            return results, errors
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")  # longest first: memory trouble shows up at once
        pending = order
        while len(pending):
            cap = self.max_batch_tokens
            batches = self.plan(lengths[pending], pending)
            pending = pending[:0]
            for k, idx in enumerate(batches):
                self._run_batch(idx, seqs, results, errors)
                if self.max_batch_tokens < cap and k + 1 < len(batches):  # out of memory: re-plan the rest
                    pending = np.concatenate(batches[k + 1 :])
                    break
        return results, errors

    def _run_batch(
        self, idx: np.ndarray, seqs: list[np.ndarray], results: list, errors: list[str | None]
    ) -> None:
        """One micro-batch. Out of memory: split in half and retry (down to one sequence), so
        no row gets an error for the batch's size. Any other failure: one sequence at a time,
        so one poisoned input costs one row an error."""
        try:
            outs: list = self._forward([seqs[i] for i in idx])
        except Exception as exc:  # noqa: BLE001 - isolate the culprit below
            if is_out_of_memory(exc) and len(idx) > 1:
                width = self.padded_length(max(len(seqs[i]) for i in idx))
                self._out_of_memory(exc, len(idx), width)  # the budget is now at most half this batch
                pos = 0
                while pos < len(idx):  # the rest is cut to the budget as it stands (it may drop again)
                    step = max(1, self.max_batch_tokens // width)
                    self._run_batch(idx[pos : pos + step], seqs, results, errors)
                    pos += step
                return
            outs = []
            for i in idx:
                try:
                    outs.extend(self._forward([seqs[i]]))
                except Exception as exc1:  # noqa: BLE001
                    if is_out_of_memory(exc1):
                        self._free_memory()
                    outs.append(None)
                    errors[i] = failed("inference", exc1)
        for i, out in zip(idx, outs, strict=True):
            results[i] = out

    def _out_of_memory(self, exc: BaseException, n: int, width: int) -> None:
        """Free the cache, count the split, and cap batches at half the one that failed."""
        self._free_memory()
        self.stats.oom_splits += 1
        self.max_batch_tokens = min(self.max_batch_tokens, max(width, n * width // 2))
        if self.stats.oom_splits == 1:  # once per runner: the run report counts the rest
            log.warning(
                "out of memory on a batch of %d sequences x %d tokens (%s): splitting it, and capping "
                "batches at %d padded tokens from now on (set runtime.max_batch_tokens lower to "
                "avoid the retries)",
                n,
                width,
                str(exc).strip().split("\n", 1)[0][:120],
                self.max_batch_tokens,
            )

    def _free_memory(self) -> None:
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()

    def _forward(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        lens = np.fromiter((len(s) for s in batch), dtype=np.int64, count=len(batch))
        width = self.padded_length(int(lens.max()))
        ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = seq
        mask = (np.arange(width)[None, :] < lens[:, None]).astype(np.int64)
        t0, c0 = time.perf_counter(), self.cpu_clock()
        with torch.inference_mode():
            attention = torch.from_numpy(mask).to(self.device, non_blocking=True)
            raw = self.model(
                input_ids=torch.from_numpy(ids).to(self.device, non_blocking=True), attention_mask=attention
            )
            out = self.output(raw, attention).float().cpu().numpy()
        seconds = time.perf_counter() - t0
        self.cost.add(ids.size, seconds)
        self.stats.forward_s += seconds
        self.stats.forward_cpu_s += self.cpu_clock() - c0
        self.stats.sequences += len(batch)
        self.stats.batches += 1
        self.stats.real_tokens += int(lens.sum())
        self.stats.padded_tokens += ids.size
        if not self.per_token:
            return list(out)
        return [out[row, : lens[row]] for row in range(len(batch))]


class ModelThreads:
    """One thread per model, so the models of a batch run side by side.

    On a CPU the second model's forward takes a spare core instead of waiting for the first
    (the scale bench, tiny models, 2 cores, 300k documents: 3,192 documents/s against 2,460); on a
    GPU one model's Python work overlaps the other's kernels. Each model keeps its own thread,
    so each thread's caches (oneDNN primitives, heap arena) see one model's shapes only. On a
    CPU the torch threads the process has are shared out between the models, so the process
    runs no more threads at once than it would one after the other (at least one per model).
    """

    def __init__(self, names: list[str], runners: dict[str, ModelRunner]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from pipeline.models import threads_per_model

        total = torch.get_num_threads()
        on_cpu = all(r.device.type == "cpu" for r in runners.values())
        each = threads_per_model(total, len(names), parallel=on_cpu)
        if each == 1 or not on_cpu:  # each forward's CPU work is its own thread's: count that alone
            for runner in runners.values():
                runner.cpu_clock = time.thread_time
        self.pools = {
            name: ThreadPoolExecutor(1, f"model-{name}", initializer=torch.set_num_threads, initargs=(each,))
            for name in names
        }

    def submit(self, name: str, fn: Any, *args: Any) -> Future:
        return self.pools[name].submit(fn, *args)


@dataclass
class Inferred:
    """Model outputs for one document, by model name, in the form the model's kind reduces to
    (a classifier: logits [C]; NER: window spans and content-token logits)."""

    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # the revision of every model of the engine that ran (shared by a batch's documents):
    # decoding checks it against the label maps it holds, so no answer gets another revision's labels
    revisions: dict[str, str] = field(default_factory=dict)


class InferenceEngine:
    """Turns encoded documents into per-document outputs for every configured model."""

    def __init__(self, models: dict[str, LoadedModel], runtime: RuntimeConfig) -> None:
        from pipeline.kinds import kind_of

        self.models = models
        self.revisions = {name: lm.revision for name, lm in models.items()}
        self.kinds = {name: kind_of(lm.spec) for name, lm in models.items()}
        self.runners: dict[str, ModelRunner] = {}
        self.framing: dict[str, Framing] = {}
        for name, lm in models.items():
            framing = framing_of(lm.facts.tokenizer)
            self.framing[name] = framing
            self.runners[name] = ModelRunner(
                lm.model,
                batch_size=runtime.batch_size,
                pad_id=framing.pad_id,
                pad_multiple=runtime.pad_multiple,
                max_length=lm.spec.max_length,
                max_batch_tokens=runtime.max_batch_tokens,
                output=self.kinds[name].output(lm),
                per_token=self.kinds[name].per_token,
            )
        parallel = runtime.parallel_models and len(models) > 1
        self.threads = ModelThreads(list(models), self.runners) if parallel else None

    def stats(self) -> RunStats:
        total = RunStats()
        for runner in self.runners.values():
            total.add(runner.stats)
        return total

    def infer(self, docs: list[Encoded]) -> list[Inferred]:
        """Each model runs over the documents that carry its stream (all, unless a request
        asked for a subset); a document's first error, in model order, wins."""
        out = [Inferred(error=d.error, revisions=self.revisions) for d in docs]
        if self.threads is None:
            done = [self._run_model(name, docs) for name in self.models]
        else:
            futures = [self.threads.submit(name, self._run_model, name, docs) for name in self.models]
            done = [f.result() for f in futures]
        for name, (outputs, errors) in zip(self.models, done, strict=True):
            for i, output in outputs.items():
                out[i].outputs[name] = output
            for i, err in errors.items():
                out[i].error = out[i].error or err
        heap.trim()  # long-lived actors and replicas stay flat (see pipeline.heap)
        return out

    def _run_model(self, name: str, docs: list[Encoded]) -> tuple[dict[int, Any], dict[int, str]]:
        """One model's reduced outputs and errors, by document index."""
        spec, kind, framing = self.models[name].spec, self.kinds[name], self.framing[name]
        first_only = kind.first_window_only(spec)
        seqs: list[np.ndarray] = []
        owners: list[tuple[int, np.ndarray]] = []  # (doc index, window spans)
        for i, d in enumerate(docs):
            tokens = d.streams.get(name)
            if d.error is not None or tokens is None:
                continue
            spans = window_spans(len(tokens), spec.max_length, spec.stride, framing.n_special, first_only)
            owners.append((i, spans))
            seqs.extend(framing.frame(tokens.ids[s:e]) for s, e in spans)
        outputs: dict[int, Any] = {}
        errors: dict[int, str] = {}
        if not seqs:
            return outputs, errors
        logits, seq_errors = self.runners[name].run(seqs)
        k = 0
        for i, spans in owners:
            w = len(spans)
            err = next((e for e in seq_errors[k : k + w] if e), None)
            if err:
                errors[i] = err
            else:
                # no error for these sequences: each has its logits
                outputs[i] = kind.reduce(cast(list[np.ndarray], logits[k : k + w]), spans, framing)
            k += w
        return outputs, errors
