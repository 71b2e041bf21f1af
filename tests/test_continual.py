"""The continual-learning protocol (tgdd.continual) against DM's CL_DM.py loop written out by hand
on a tiny generated data set: class orders, memory, test subsets, fresh networks, accuracies."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tgdd.augment import normalize
from tgdd.continual import class_orders, classes_seen, evaluate_continual
from tgdd.models import build_model
from tgdd.protocols import PROTOCOLS
from tgdd.runtime import derive_seed, generator, numpy_rng, seeded_init
from tgdd.train import train_classifier

CLASSES, STEPS, ORDERS, RUNS = 4, 2, 2, 2
SETTINGS = replace(PROTOCOLS.get("dc").train, epochs=2, batch_size=4)


def tiny_sets():
    gen = torch.Generator().manual_seed(0)
    syn = torch.rand(3 * CLASSES, 1, 8, 8, generator=gen)
    syn_labels = torch.arange(CLASSES).repeat(3)  # interleaved: the memory must regroup them
    test = torch.rand(5 * CLASSES, 1, 8, 8, generator=gen)
    return syn, syn_labels, test, torch.arange(CLASSES).repeat_interleave(5)


def test_class_orders_are_dms():
    for s, order in enumerate(class_orders(100, 5)):
        np.random.seed(s)  # CL_DM.py: np.random.seed(seed_cl); np.random.permutation(num_classes)
        assert order == np.random.permutation(100).tolist()
    assert sorted(class_orders(100, 1)[0]) == list(range(100))


def test_steps_must_split_the_classes_evenly():
    assert classes_seen([3, 1, 0, 2], 2, 0) == [3, 1]
    assert classes_seen([3, 1, 0, 2], 2, 1) == [3, 1, 0, 2]
    with pytest.raises(ValueError, match="equal steps"):
        classes_seen(list(range(10)), 3, 0)


def test_continual_protocol_equals_the_loop_written_out():
    syn, syn_labels, test, test_labels = tiny_sets()
    mean, std = torch.tensor([0.5]), torch.tensor([0.25])
    result = evaluate_continual(syn, syn_labels, test, test_labels, mean, std, num_classes=CLASSES, steps=STEPS,
                                orders=ORDERS, runs=RUNS, arch="convnet-1-w8", settings=SETTINGS, seed=3,
                                device=torch.device("cpu"), progress=False)  # fmt: skip
    expected = []
    for step in range(STEPS):
        accs = []
        for o in range(ORDERS):
            np.random.seed(o)
            order = np.random.permutation(CLASSES).tolist()
            seen = order[: (step + 1) * (CLASSES // STEPS)]
            memory = [(syn[i], c) for c in seen for i in range(len(syn)) if int(syn_labels[i]) == c]
            memory_x = torch.stack([x for x, _ in memory])
            memory_y = torch.tensor([c for _, c in memory])
            keep = [i for i in range(len(test)) if int(test_labels[i]) in seen]
            for run in range(RUNS):
                run_seed = derive_seed(3, "continual", STEPS, o, step, run)
                with seeded_init(run_seed):
                    model = build_model("convnet-1-w8", 1, 8, CLASSES)  # every class's output, as DM
                train_classifier(model, memory_x, memory_y, SETTINGS, mean, std, generator(run_seed, "batches"),
                                 numpy_rng(run_seed, "cutmix"))  # fmt: skip
                with torch.no_grad():
                    pred = model(normalize(test[keep], mean, std)).argmax(1)
                accs.append(100.0 * float((pred == test_labels[keep]).float().mean()))
        expected.append(accs)
    for got, want in zip(result.accuracies, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-4)  # (the hand loop's mean is a float32 one)
    assert result.accuracies[0] != result.accuracies[1]  # two steps, other memories
    assert result.classes_seen == [2, 4]
    assert [row["mean"] for row in result.summary()] == pytest.approx([np.mean(a) for a in expected])
    assert [row["std"] for row in result.summary()] == pytest.approx([np.std(a) for a in expected])
    assert len(result.accuracies[0]) == ORDERS * RUNS
