"""P x K identity sampler: composition, coverage, determinism, disjoint ranks, replacement."""

from collections import Counter

import pytest

from models.data.sampler import IdentityBatchSampler

# 13 identities; identity 12 has a single picture, identity 3 two.
PIDS = [pid for pid in range(13) for _ in range(1 if pid == 12 else 2 if pid == 3 else 5)]


def batches(sampler, epoch=0):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_batches_are_p_identities_times_k_pictures():
    sampler = IdentityBatchSampler(PIDS, num_identities=4, num_instances=3, seed=1)
    assert len(sampler) == 3 and sampler.batch_size == 12
    seen = []
    for batch in batches(sampler):
        assert len(batch) == 12
        pids = [PIDS[i] for i, _ in batch]
        # Identity by identity, K pictures each.
        assert all(len(set(pids[k * 3:(k + 1) * 3])) == 1 for k in range(4))
        assert Counter(pids) == dict.fromkeys(set(pids), 3)
        seen += set(pids)
    # One epoch visits each identity at most once; 13 // 4 groups of 4 = 12 of them.
    assert len(seen) == len(set(seen)) == 12


def test_pictures_without_replacement_unless_too_few():
    sampler = IdentityBatchSampler(PIDS, num_identities=13, num_instances=4, seed=0)
    for epoch in range(5):
        (batch,) = batches(sampler, epoch)
        by_pid = {}
        for index, _ in batch:
            by_pid.setdefault(PIDS[index], []).append(index)
        for pid, indices in by_pid.items():
            if pid == 12:
                assert len(set(indices)) == 1  # one picture, drawn 4 times
            elif pid == 3:
                assert len(set(indices)) <= 2
            else:
                assert len(set(indices)) == 4


def test_seed_and_epoch_determine_the_batches():
    a = IdentityBatchSampler(PIDS, 4, 2, seed=7)
    b = IdentityBatchSampler(PIDS, 4, 2, seed=7)
    assert batches(a, 3) == batches(b, 3)
    assert batches(a, 3) != batches(a, 4)
    assert batches(a, 3) != batches(IdentityBatchSampler(PIDS, 4, 2, seed=8), 3)
    # Augmentation seeds are per picture and distinct.
    seeds = [s for batch in batches(a, 0) for _, s in batch]
    assert len(set(seeds)) == len(seeds)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_identities_and_together_make_the_single_process_batch(world_size):
    single = IdentityBatchSampler(PIDS, 2 * world_size, 2, seed=5)
    ranks = [IdentityBatchSampler(PIDS, 2, 2, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
    per_rank = [batches(s, 1) for s in ranks]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(single)
    for step, batch in enumerate(batches(single, 1)):
        assert batch == [item for r in range(world_size) for item in per_rank[r][step]]
        identity_sets = [{PIDS[i] for i, _ in per_rank[r][step]} for r in range(world_size)]
        assert sum(len(s) for s in identity_sets) == len(set().union(*identity_sets))


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_identities=0, num_instances=4), "num_identities must be >= 1"),
    (dict(num_identities=4, num_instances=0), "num_instances must be >= 1"),
    (dict(num_identities=4, num_instances=4, rank=2, world_size=2), "rank must be in 0..1"),
    (dict(num_identities=7, num_instances=4, world_size=2), "13 identities make 1 groups of 7, fewer than the 2 ranks"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IdentityBatchSampler(PIDS, **kwargs)
