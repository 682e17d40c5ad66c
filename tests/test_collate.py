"""Rows of different lengths (token ids, audio): ``collate_fn`` in ``fastal.torch.pool_outputs``,
``fastal.torch.select`` and ``fastal.loop.run`` (a user trial found no way to run the loop on
them: its evaluation and selection batched a Dataset with torch's default collate, which cannot
stack rows of different lengths)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn
from torch.utils.data import DataLoader, Dataset

import fastal.torch as ft
from fastal import loop

V, C = 30, 3


class Sentences(Dataset):
    """``(token ids of length 2..9, label)``; the label is whether token 1 occurs more than 2."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.rows = [torch.from_numpy(rng.integers(1, V, rng.integers(2, 10))) for _ in range(n)]
        self.labels = [int((r == 1).sum() > (r == 2).sum()) + int(len(r) > 6) for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.rows[i], self.labels[i]


def pad(items):
    """(padded ids, labels): id 0 pads, as the model's padding_idx."""
    ids = nn.utils.rnn.pad_sequence([x for x, _ in items], batch_first=True, padding_value=0)
    return ids, torch.tensor([y for _, y in items])


class MeanOfEmbeddings(nn.Module):
    """Mean of the non-padding embeddings, then a linear head: one row's output does not depend
    on how far the batch pads it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, 8, padding_idx=0)
        self.head = nn.Linear(8, C)

    def forward(self, ids):
        mask = (ids != 0).unsqueeze(-1)
        mean = (self.embed(ids) * mask).sum(1) / mask.sum(1)
        return self.head(mean)


def one_row_at_a_time(model, data):
    with torch.no_grad():
        rows = [model(x[None]) for x, _ in data]
    return torch.cat(rows)


def test_pool_outputs_reads_rows_of_different_lengths_with_collate_fn():
    torch.manual_seed(0)
    model, data = MeanOfEmbeddings().eval(), Sentences(23, seed=1)
    out = ft.pool_outputs(
        model, data, ("features", "logits"), batch_size=5, collate_fn=pad, progress=False
    )
    assert_allclose(out["logits"].numpy(), one_row_at_a_time(model, data).numpy(), rtol=1e-5,
                    atol=1e-6)  # fmt: skip
    assert out["features"].shape == (23, 8)
    same = ft.pool_outputs(model, DataLoader(data, batch_size=5, collate_fn=pad), ("logits",),
                           progress=False)  # fmt: skip
    assert torch.equal(same["logits"], out["logits"])  # as the user's own DataLoader reads it
    with pytest.raises(ValueError, match=r"^the rows differ in size.*pass collate_fn= .*"
                       r"\(torch: stack expects each tensor to be equal size"):  # fmt: skip
        ft.pool_outputs(model, data, ("logits",), batch_size=5, progress=False)  # no collate_fn
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        ft.pool_outputs(model, DataLoader(data, batch_size=5), ("logits",), progress=False)


def test_select_takes_collate_fn():
    torch.manual_seed(0)
    model, data = MeanOfEmbeddings().eval(), Sentences(40, seed=2)
    sel = ft.select("entropy", model, data, 4, labeled=[0, 1], collate_fn=pad, batch_size=7,
                    progress=False)  # fmt: skip
    logits = one_row_at_a_time(model, data)
    p = torch.softmax(logits.double(), 1)
    scores = -(p * p.log()).sum(1).numpy()
    scores[[0, 1]] = -np.inf
    assert sorted(sel.indices.tolist()) == sorted(np.argsort(-scores)[:4].tolist())


def test_collate_fn_is_refused_where_nothing_is_collated():
    model, x = MeanOfEmbeddings(), torch.ones(4, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="collate_fn is for a Dataset: data is a Tensor"):
        ft.pool_outputs(model, x, ("logits",), collate_fn=pad)
    with pytest.raises(ValueError, match="collate_fn is for a Dataset: data is a ndarray"):
        ft.pool_outputs(model, x.numpy(), ("logits",), collate_fn=pad)
    loader = DataLoader(Sentences(4, seed=0), batch_size=2, collate_fn=pad)
    with pytest.raises(ValueError, match="data is a DataLoader, which collates with its own"):
        ft.pool_outputs(model, loader, ("logits",), collate_fn=pad)
    with pytest.raises(TypeError, match="collate_fn must be callable, got str"):
        ft.pool_outputs(model, Sentences(4, seed=0), ("logits",), collate_fn="pad")
    # a strategy that reads no model output is refused the same way (not silently ignored)
    with pytest.raises(ValueError, match="collate_fn is for a Dataset: data is a Tensor"):
        ft.select("random", model, x, 1, collate_fn=pad)


def train_padded(model, dataset, *, task, seed, device):
    """A user's training loop over padded batches (fit stacks rows: it cannot take these)."""
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    loader = DataLoader(dataset, batch_size=8, shuffle=True, collate_fn=pad,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    model.train()
    for _ in range(3):
        for ids, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(ids), y).backward()
            opt.step()
    return model


def test_loop_runs_on_rows_of_different_lengths():
    pool, test = Sentences(80, seed=3), Sentences(30, seed=4)
    kwargs = dict(model_fn=MeanOfEmbeddings, train_fn=train_padded, initial=10, budget=5,
                  rounds=2, batch_size=16)  # fmt: skip
    res = loop.run(pool, test, strategy="entropy", collate_fn=pad, **kwargs)
    assert res.n_labeled.tolist() == [10, 15, 20]
    assert np.unique(res.labeled).size == 20
    assert ((res.values >= 0) & (res.values <= 1)).all()
    again = loop.run(pool, test, strategy="entropy", collate_fn=pad, **kwargs)
    assert again.labeled.tolist() == res.labeled.tolist()  # seeded: the same run
    with pytest.raises(ValueError, match=r"^the rows differ in size.*pass collate_fn="):
        loop.run(pool, test, strategy="entropy", **kwargs)  # the evaluation could not batch them
    with pytest.raises(ValueError, match=r"select_options sets collate_fn, which run passes"):
        loop.run(pool, test, strategy="entropy", select_options={"collate_fn": pad}, **kwargs)
    with pytest.raises(TypeError, match="collate_fn must be callable"):
        loop.run(pool, test, strategy="entropy", collate_fn=1, **kwargs)


class Tagged(Dataset):
    """``({"tokens": row}, label)``: the model takes ``ids``, so a batch_fn picks them out."""

    def __init__(self, n: int, seed: int) -> None:
        self.inner = Sentences(n, seed)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        x, y = self.inner[i]
        return {"tokens": x[:2]}, y  # two ids each: the default collate stacks them


def test_loop_counts_classes_on_a_pool_row_read_with_the_selections_batch_fn():
    """select_options' batch_fn reached the selection only: the class count, which runs the
    model on one pool row, gave it the dict itself. The test set (here a tensor pair) is read
    without it: it may be of another kind than the pool."""

    def train_tagged(model, dataset, *, task, seed, device):
        return model

    test = Sentences(12, seed=6)
    test_ids = torch.stack([x[:2] for x, _ in test])
    res = loop.run(
        Tagged(40, seed=5), (test_ids, torch.tensor(test.labels)), model_fn=MeanOfEmbeddings,
        strategy="margin", train_fn=train_tagged, initial=5, budget=3, rounds=1,
        select_options={"batch_fn": lambda batch: batch[0]["tokens"]},
    )  # fmt: skip
    assert res.n_labeled.tolist() == [5, 8]


def test_collate_fn_takes_a_plain_list_of_rows():
    """A list of equal-length number lists became an array before the collate_fn check, which
    then refused it as an ndarray the caller never passed."""
    model = MeanOfEmbeddings().eval()
    rows = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    calls = []

    def stack(items):
        calls.append(len(items))
        return torch.tensor(items)

    out = ft.pool_outputs(model, rows, ("logits",), collate_fn=stack, progress=False)
    with torch.no_grad():
        assert_allclose(out["logits"].numpy(), model(torch.tensor(rows)).numpy(), rtol=1e-6)
    assert calls == [3]
