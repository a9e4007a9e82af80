"""Choosing the speed at inference: a prunable student (models/pruning.py) scored and measured at
several length configurations, and a LAT-style evolutionary search of per-layer lengths.

Scores at a length configuration come from `score_at`: the examples are grouped by exact length, so
no batch holds padding and a keep ratio means for every example what it means in the latency
measurement (whose inputs are real text of exactly `seq_len` tokens). With padding, a batch's padding
would be dropped first and short examples would lose fewer real tokens than the ratio says.

`measure_lengths` (called by the pipeline when `bench.keep_ratios` or `bench.length_search` is set)
returns report.json's `student.pruning` (one entry per keep ratio) and `student.length_search` (the
searched Pareto configurations), every entry with its eval score, GFLOPs at batch 1 (counted by
torch.utils.flop_counter on the shortened tensors), the lengths at `seq_len`, and latency measured
side by side with the others (bench.compare_latency: the configurations alternate over rounds).
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from torch import nn

from lmdistill import bench
from lmdistill.models.pruning import check_length_config, is_prunable, resolve_lengths, to_prunable

logger = logging.getLogger("lmdistill")


class LengthConfigured(nn.Module):
    """A prunable model called at a fixed length configuration (what latency and FLOPs measure)."""

    def __init__(self, model: nn.Module, length_config):
        super().__init__()
        self.model = model
        self.length_config = 1.0 if length_config is None else length_config
        self.config = model.config

    def forward(self, **inputs):
        return self.model(**inputs, length_config=self.length_config)


def _split(output, count: int) -> list:
    """One task eval_step output (an array [B, ...] or a list of B items) -> B per-example items."""
    if isinstance(output, np.ndarray):
        return list(output)
    if isinstance(output, (list, tuple)) and len(output) == count:
        return list(output)
    raise TypeError(f"cannot split an eval output of type {type(output).__name__} per example")


@torch.no_grad()
def score_at(model: nn.Module, task, tokenizer, length_config, dataset=None, batch_size: int = 64) -> dict:
    """Task metrics of a prunable `model` at `length_config`, on `dataset` (default: the eval split),
    with the examples grouped by exact length (see the module docstring)."""
    split_raw = task.raw_eval if dataset is None else None  # the eval split is scored as the task scores it
    dataset = dataset if dataset is not None else task.eval_dataset(tokenizer, model.config)
    keep = [c for c in dataset.column_names if not c.startswith("_")]
    columns = dataset.select_columns(keep).to_dict()
    rows = [{c: columns[c][i] for c in keep} for i in range(len(dataset))]
    groups: dict[int, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(len(row["input_ids"]), []).append(index)
    collate = task.collator(tokenizer)
    wrapped = LengthConfigured(model, length_config)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    items: list = [None] * len(dataset)
    as_array = False  # the task's eval_step gives one array per batch (else a list of per-example items)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate([rows[i] for i in chunk]).items()}
            output = task.eval_step(wrapped, batch)
            as_array = isinstance(output, np.ndarray)
            for index, item in zip(chunk, _split(output, len(chunk))):
                items[index] = item
    model.train(was_training)
    # Back in dataset order, as one batch of the task's own kind (a list may hold arrays of different
    # lengths, e.g. token classification's per-window predictions).
    outputs = [np.stack(items)] if as_array else [items]
    metrics = task.compute_metrics(outputs, dataset, split_raw)
    metrics = {k: float(v) for k, v in metrics.items()}
    return {"metric": task.primary_metric, "score": metrics[task.primary_metric], **metrics}


def gflops_at(model: nn.Module, batch: dict, length_config) -> float:
    """FLOPs of one forward at `length_config` (counted on the tensors the pruned forward really uses)."""
    return bench.forward_gflops(LengthConfigured(model, length_config), batch)


# ---- evolutionary search (LAT: clovaai/length-adaptive-transformer, evolution.py) ---------------------

def pareto_front(store: dict) -> list:
    """Genes not dominated in (lower GFLOPs, higher score), sorted by GFLOPs. store: gene -> (gflops, score)."""
    front = []
    for gene, (flops, score) in sorted(store.items(), key=lambda item: (item[1][0], -item[1][1])):
        if not front or score > store[front[-1]][1]:
            front.append(gene)
    return front


class LengthSearch:
    """Genes are per-layer fractions of the input length on a grid of `step`, non-increasing. Each gene
    is scored on a sample of training examples and costed in GFLOPs at `seq_len`; the population is the
    Pareto front; each iteration adds mutations (each layer redrawn with `mutation_prob` between its
    neighbours) and crossovers (element-wise mean, rounded up to the grid) of front genes."""

    def __init__(self, model, num_layers: int, settings, evaluate, cost):
        self.model, self.layers, self.settings = model, num_layers, settings
        self.evaluate, self.cost = evaluate, cost  # gene -> score, gene -> gflops
        self.rng = random.Random(settings.seed)
        steps = round(1 / settings.step)
        self.grid = [round(k * settings.step, 6) for k in range(1, steps + 1)]
        if self.grid[-1] < 1.0:
            self.grid.append(1.0)
        self.store: dict[tuple, tuple[float, float]] = {}

    def snap(self, value: float) -> float:
        return next((g for g in self.grid if g >= value - 1e-9), 1.0)

    def add(self, gene: tuple) -> None:
        if gene not in self.store:
            self.store[gene] = (self.cost(gene), self.evaluate(gene))
            logger.info("length search: %s -> %.4f GFLOPs, score %.4f", list(gene), *self.store[gene])

    def random_gene(self) -> tuple:
        gene, upper = [], 1.0
        for _ in range(self.layers):
            upper = self.rng.choice([g for g in self.grid if g <= upper])
            gene.append(upper)
        return tuple(gene)

    def mutate(self, gene: tuple) -> tuple:
        new = list(gene)
        for i in range(self.layers):
            if self.rng.random() < self.settings.mutation_prob:
                upper = new[i - 1] if i else 1.0
                lower = gene[i + 1] if i + 1 < self.layers else self.grid[0]
                new[i] = self.rng.choice([g for g in self.grid if lower - 1e-9 <= g <= upper + 1e-9])
        for i in range(1, self.layers):  # keep it non-increasing
            new[i] = min(new[i], new[i - 1])
        return tuple(new)

    def crossover(self, a: tuple, b: tuple) -> tuple:
        return tuple(self.snap((x + y) / 2) for x, y in zip(a, b))

    def run(self) -> list[tuple]:
        s = self.settings
        for ratio in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)[: s.population]:
            self.add(tuple(self.snap(ratio ** (i + 1)) for i in range(self.layers)))
        while len(self.store) < s.population:
            self.add(self.random_gene())
        for iteration in range(s.iterations):
            front = pareto_front(self.store)
            for _ in range(s.mutations):
                self.add(self.mutate(self.rng.choice(front)))
            for _ in range(s.crossovers if len(front) >= 2 else 0):
                self.add(self.crossover(*self.rng.sample(front, 2)))
            logger.info("length search: iteration %d, %d genes, front of %d", iteration + 1, len(self.store),
                        len(pareto_front(self.store)))
        return pareto_front(self.store)


def spread(front: list, count: int) -> list:
    """At most `count` genes of a front sorted by cost, evenly spaced, both ends included."""
    if len(front) <= count:
        return list(front)
    picks = sorted({round(i * (len(front) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]
    return [front[i] for i in picks]


def search_lengths(model, task, tokenizer, settings, batch: dict) -> list[dict]:
    """The searched Pareto configurations: [{length_config, search_score, gflops_batch1}], cheapest first."""
    train = task.train_dataset(tokenizer, model.config)
    count = min(settings.samples, len(train))
    sample = train.shuffle(seed=settings.seed).select(range(count))
    layers = model.config.num_hidden_layers
    search = LengthSearch(model, layers, settings,
                          evaluate=lambda gene: score_at(model, task, tokenizer, gene, sample)["score"],
                          cost=lambda gene: gflops_at(model, batch, gene))
    front = search.run()
    chosen = spread(front, settings.report)
    return [{"length_config": list(gene), "search_score": round(search.store[gene][1], 6),
             "gflops_batch1": round(search.store[gene][0], 5), "evaluated_configs": len(search.store)}
            for gene in chosen]


def measure_lengths(student: nn.Module, task, tokenizer, config, seq_len: int, threads: int,
                    extra_seq_lens: tuple[int, ...] = ()) -> dict:
    """report.json's student.pruning (and student.length_search): see the module docstring.
    `extra_seq_lens`: latency, lengths and GFLOPs also at these input lengths (entry["latency_ms_at"],
    ["lengths_at"], ["gflops_batch1_at"], keyed by str(length))."""
    model = student if is_prunable(student) else to_prunable(student)
    model.eval()
    layers = model.config.num_hidden_layers
    make_batch = lambda size, length: task.bench_batch(tokenizer, size, length, model.config)  # noqa: E731
    one = make_batch(1, seq_len)
    min_tokens = model.config.min_tokens
    entries = []
    for ratio in config.bench.keep_ratios or []:
        spec = check_length_config(ratio, layers, "bench.keep_ratios")
        entries.append(("pruning", {"keep_ratio": ratio}, spec))
    if config.bench.length_search:
        for found in search_lengths(model, task, tokenizer, config.bench.length_search, one):
            spec = check_length_config(found["length_config"], layers, "bench.length_search")
            entries.append(("length_search", found, spec))
    results = {"pruning": [], "length_search": []} if config.bench.length_search else {"pruning": []}
    contenders = {}
    for index, (kind, entry, spec) in enumerate(entries):
        scores = score_at(model, task, tokenizer, spec, batch_size=config.training.eval_batch_size)
        entry.update({"score": scores["score"], "metrics": scores,
                      "gflops_batch1": round(gflops_at(model, one, spec), 5),
                      "lengths": resolve_lengths(spec, seq_len, layers, min_tokens)})
        contenders[f"{index}"] = (LengthConfigured(model, spec), make_batch)
        results[kind].append(entry)
    if contenders:
        b = config.bench
        latency = bench.compare_latency(contenders, b.batch_sizes, seq_len, b.repeats, b.warmup, threads, b.rounds)
        for length in extra_seq_lens:
            at = bench.compare_latency(contenders, b.batch_sizes, length, b.repeats, b.warmup, threads, b.rounds)
            for index, (_, entry, spec) in enumerate(entries):
                entry.setdefault("latency_ms_at", {})[str(length)] = at[str(index)]
                entry.setdefault("lengths_at", {})[str(length)] = resolve_lengths(spec, length, layers, min_tokens)
                entry.setdefault("gflops_batch1_at", {})[str(length)] = round(
                    gflops_at(model, make_batch(1, length), spec), 5)
        for index, (_, entry, _) in enumerate(entries):
            entry["latency_ms"] = latency[str(index)]
    return results
