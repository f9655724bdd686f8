"""Mixture sampling: deterministic per seed, exact remaining order after restore, weights honoured."""

import numpy as np
import pytest

from cotune.data.dataset import PreparedDataset
from cotune.data.sampler import MixtureDataset, MixtureSampler
from cotune.data.schema import Message, Sample
from cotune.data.spec import DataSpec
from cotune.testing import tiny


def dataset(name, n, length_of=lambda i: 3 + i % 7):
    spec = DataSpec(tiny.make_tokenizer(), [], "lavin", None, 512)
    samples = [Sample(f"{name}-{i}", [Message("user", "q"), Message("assistant", "a")]) for i in range(n)]
    ids = [[5] * length_of(i) for i in range(n)]
    labels = [[-100] * (length_of(i) - 1) + [5] for i in range(n)]
    return PreparedDataset(name, samples, ids, labels, spec)


@pytest.fixture
def mixture():
    return MixtureDataset([dataset("image", 40), dataset("text", 25)])


def test_same_seed_same_order_and_different_seed_differs(mixture):
    a = list(MixtureSampler(mixture, [1, 1], seed=3))
    b = list(MixtureSampler(mixture, [1, 1], seed=3))
    c = list(MixtureSampler(mixture, [1, 1], seed=4))
    assert a == b and a != c
    assert sorted(a) == list(range(65))  # equal weights, no epoch size: every sample once


def test_restored_position_gives_the_same_remaining_order(mixture):
    sampler = MixtureSampler(mixture, [1, 1], seed=0, batch_size=4, group_by_length=True)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_position(24)
    state = sampler.state_dict()
    resumed = MixtureSampler(mixture, [1, 1], seed=0, batch_size=4, group_by_length=True)
    resumed.load_state_dict(state)
    assert list(resumed) == full[24:]
    assert len(resumed) == len(full) - 24
    sampler.set_epoch(3)
    assert list(sampler) != full
    with pytest.raises(ValueError, match="seed"):
        MixtureSampler(mixture, [1, 1], seed=1).load_state_dict(state)


def test_weights_are_per_sample_rates_and_epoch_size_rescales(mixture):
    order = np.array(list(MixtureSampler(mixture, [1, 4], seed=0)))
    assert len(order) == 40 + 4 * 25
    assert np.bincount(order[order >= 40] - 40).tolist() == [4] * 25  # four whole passes over text
    assert np.bincount(order[order < 40]).tolist() == [1] * 40
    order = np.array(list(MixtureSampler(mixture, [1, 1], seed=0, epoch_size=130)))
    assert len(order) == 130 and (order >= 40).sum() == 50
    half = np.array(list(MixtureSampler(mixture, [1, 1], seed=0, epoch_size=30)))
    assert len(set(half.tolist())) == 30  # a partial pass never repeats a sample


def test_batches_mix_modalities_and_length_grouping_reduces_padding(mixture):
    order = list(MixtureSampler(mixture, [1, 1], seed=0))
    batches = [order[i : i + 8] for i in range(0, 64, 8)]
    assert any(min(b) < 40 <= max(b) for b in batches)  # text-only and image samples share batches
    lengths = mixture.lengths

    def padding(order):
        return sum(8 * lengths[b].max() - lengths[b].sum() for b in (np.array(order[i : i + 8]) for i in range(0, 64, 8)))

    grouped = list(MixtureSampler(mixture, [1, 1], seed=0, batch_size=8, group_by_length=True))
    assert sorted(grouped) == sorted(order)
    assert padding(grouped) < padding(order)


def test_mixture_locates_items(mixture):
    assert mixture.locate(0) == (0, 0) and mixture.locate(39) == (0, 39) and mixture.locate(40) == (1, 0)
    item = mixture[41]
    assert item["id"] == "text-1" and item["dataset"] == "text"
    assert item["labels"].tolist()[-1] == 5 and item["labels"].tolist()[0] == -100


def test_processes_split_each_global_batch_and_pad_to_whole_batches(mixture):
    single = list(MixtureSampler(mixture, [1, 1], seed=0, batch_size=6))
    ranks = [list(MixtureSampler(mixture, [1, 1], seed=0, batch_size=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 33  # 65 samples padded to 66
    for k in range(11):
        global_batch = ranks[0][3 * k : 3 * k + 3] + ranks[1][3 * k : 3 * k + 3]
        expected = (single + single[:1])[6 * k : 6 * k + 6]
        assert global_batch == expected
    resumed = MixtureSampler(mixture, [1, 1], seed=0, batch_size=3, num_replicas=2, rank=1)
    resumed.set_position(12)
    assert list(resumed) == ranks[1][6:] and len(resumed) == 27
