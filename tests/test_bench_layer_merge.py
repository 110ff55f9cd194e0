"""benchmarks/bench_layer_merge.py: the merge rule against a naive per-tensor reference on a tiny
random Llama (layers 1, 2 and 4 of 5 removed: 1 and 2 fold into 0, 4 into 3)."""

from __future__ import annotations

import pytest
import tiny
import torch
from bench_import import load_benchmark

from nexus.models import build_student, decoder_layers

KEEP = [0, 3]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_layer_merge")


@pytest.mark.parametrize("weight", [0.0, 0.5, None])
def test_merge_folds_removed_layers_into_the_kept_one_below(bench, tiny_tokenizer, weight):
    teacher = tiny.build_model("llama", tiny_tokenizer, num_layers=5, seed=1)
    student = build_student(teacher, KEEP)
    bench.merge_into_kept(teacher, student, KEEP, weight=weight)
    t = [dict(layer.named_parameters()) for layer in decoder_layers(teacher)]
    s = [dict(layer.named_parameters()) for layer in decoder_layers(student)]
    for new, (kept, removed) in enumerate([(0, [1, 2]), (3, [4])]):
        for name, p in s[new].items():
            base = t[kept][name]
            if "norm" in name:
                want = base
            elif weight is None:  # LaCo: the sum of the differences
                want = base + sum(t[r][name] - base for r in removed)
            else:
                want = base + weight * sum(t[r][name] - base for r in removed) / len(removed)
            torch.testing.assert_close(p, want)
    emb = student.get_input_embeddings().weight
    torch.testing.assert_close(emb, teacher.get_input_embeddings().weight)  # only layers change
