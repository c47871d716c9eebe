"""ResumableSampler: the same order as a plain shuffling DataLoader, and the rest of an epoch after a resume."""

import torch
from torch.utils.data import DataLoader, RandomSampler

from lightvessel_monai.data.samplers import ResumableSampler


def _epochs(loader, n):
    return [torch.cat(list(loader)).tolist() for _ in range(n)]


def test_wrapping_keeps_the_order_of_a_shuffling_data_loader():
    data = torch.arange(10)
    torch.manual_seed(3)
    plain = _epochs(DataLoader(data, batch_size=3, shuffle=True), 3)
    torch.manual_seed(3)
    wrapped = _epochs(DataLoader(data, batch_size=3, sampler=ResumableSampler(RandomSampler(data))), 3)
    assert wrapped == plain and plain[0] != plain[1]


def test_a_resumed_epoch_continues_the_stored_order_and_draws_nothing():
    data = torch.arange(10)
    sampler = ResumableSampler(RandomSampler(data))
    loader = DataLoader(data, batch_size=3, sampler=sampler)
    torch.manual_seed(0)
    batches = iter(loader)
    first = [next(batches).tolist() for _ in range(2)]
    state = sampler.state_dict(consumed=6)
    rng = torch.get_rng_state()
    rest = torch.cat(list(batches)).tolist()

    fresh = ResumableSampler(RandomSampler(data))
    fresh.resume_from(state)
    torch.set_rng_state(rng)
    resumed = [b.tolist() for b in DataLoader(data, batch_size=3, sampler=fresh)]
    assert sum(resumed, []) == rest and sum(first, []) + rest == state["order"].tolist()
    assert sorted(sum(first, []) + rest) == list(range(10))
    # the epoch after that draws a new order again
    assert torch.cat(list(DataLoader(data, batch_size=3, sampler=fresh))).tolist() != state["order"].tolist()
