"""TokenLoader: deterministic, disjoint per rank, exact resume, finite validation per language."""

from __future__ import annotations

import json

import pytest
import torch

from vernacular.data.loader import TokenLoader, bytes_per_token, languages
from vernacular.data.shards import write_shards

from test_shards import make_run


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    run, tok = make_run(tmp_path_factory.mktemp("loader"))
    write_shards(run, tok, alpha=0.3, seed=0)
    return run.tokens


def test_batches_shape_and_determinism(tokens):
    a = TokenLoader(tokens, "train", batch_size=4, seq_len=32, seed=1)
    b = TokenLoader(tokens, "train", batch_size=4, seq_len=32, seed=1)
    x = a.next_batch()
    assert x.shape == (4, 33) and x.dtype == torch.long
    assert torch.equal(x, b.next_batch())
    assert not torch.equal(TokenLoader(tokens, "train", batch_size=4, seq_len=32, seed=2).next_batch(), x)


def test_ranks_read_disjoint_slices(tokens):
    loaders = [TokenLoader(tokens, "train", batch_size=2, seq_len=32, rank=r, world_size=2) for r in range(2)]
    n = loaders[0].rank_windows
    seen = [set(), set()]
    for r, loader in enumerate(loaders):
        order = loader._epoch_order()
        seen[r] = set(order.tolist())
    assert seen[0].isdisjoint(seen[1]) and len(seen[0] | seen[1]) == loaders[0].n_windows
    assert abs(n - loaders[1].rank_windows) <= 1


def test_resume_is_exact_across_epochs(tokens):
    loader = TokenLoader(tokens, "train", batch_size=8, seq_len=64, seed=3)
    steps = loader.rank_windows // 8 + 3  # crosses an epoch boundary
    for _ in range(steps):
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))  # plain JSON-able ints
    expected = [loader.next_batch() for _ in range(4)]
    resumed = TokenLoader(tokens, "train", batch_size=8, seq_len=64, seed=3)
    resumed.load_state_dict(state)
    assert state["epoch"] >= 1
    for e in expected:
        assert torch.equal(resumed.next_batch(), e)
    with pytest.raises(ValueError, match="seed"):
        TokenLoader(tokens, "train", batch_size=8, seq_len=64, seed=4).load_state_dict(state)


def test_validation_per_language_ends_and_reports_bytes(tokens):
    assert languages(tokens, "val") == ["deu", "ell", "fin"]
    val = TokenLoader(tokens, "val", batch_size=4, seq_len=16, lang="ell")
    batches = list(val.iter_batches())
    assert sum(b.shape[0] for b in batches) == val.n_windows
    assert [torch.equal(a, b) for a, b in zip(batches, val.iter_batches())] == [True] * len(batches)
    assert len(list(val.iter_batches(max_batches=1))) == 1
    info = bytes_per_token(tokens, "val")
    assert set(info) == {"deu", "ell", "fin"} and all(v["bytes_per_token"] > 1 for v in info.values())
    with pytest.raises(ValueError, match="available"):
        TokenLoader(tokens, "val", lang="swe")
