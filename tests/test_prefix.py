"""The shared prefix: steps before a batch's first edited step run once per distinct row, then fork.

What is exact by construction. The prefix run computes the distinct rows alone; the main run skips the
denoiser at those steps and replays each row's recorded output (an index copy), while the scheduler and
the guidance arithmetic, which are elementwise per row, still run on every row. So a batch whose rows are
all unedited duplicates of a smaller batch gives that smaller batch's images bit for bit (the IF-type
pipeline has no VAE decoder, whose batched convolutions would see another batch composition).

What is not. With an edit from step k, the steps >= k run on the full batch, as without the fork, but
the rows entered step k with latents computed in the distinct-rows batch rather than in the full batch.
Batched matrix kernels may round a row differently in batches of different composition (see
tests/test_engine.py), so the fork is checked against ``share_prefix=False`` within the same
``ROW_TOLERANCE`` the engine's cross-row comparisons use, and for determinism bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SIZE
from diffprobe import InterventionError, Patch, Scale, Variant
from diffprobe.engine import distinct_rows, prefix_end
from diffprobe.plan import make_plan

SRC = 'A sign that says "STOP".'
TGT = 'A sign that says "GO".'
STEPS = 4
FORK = 2
ROW_TOLERANCE = 2  # uint8 levels, as tests/test_engine.py
#: two text sites of each tiny architecture
TWO_SITES = {
    "sd15": ("cross:0", "cross:1"), "sdxl": ("cross:0", "cross:1"), "if": ("cross:0", "cross:1"),
    "sd3": ("joint:0", "joint:1"), "flux": ("joint:0", "single:0"), "pixart": ("cross:0", "cross:1"),
}


def _sweep_batch(arch: str, fork: int = FORK) -> list[Variant]:
    """A sweep batch: one pair and seed, one variant per site, all patched from t_s = ``fork``."""
    return [Variant(SRC, (Patch(source=TGT, sites=s, steps=f"{fork}:"),), 0) for s in TWO_SITES[arch]] + [
        Variant(SRC, (Scale(factor=0.0, sites=TWO_SITES[arch][0], steps=f"{fork}:"),), 0)]


def _run(probe, arch, variants, **kw):
    return probe.execute(variants, steps=STEPS, **SIZE.get(arch, {}), **kw)[1]


def test_fork_agrees_with_full_run_and_is_deterministic(tiny_probe, arch):
    variants = _sweep_batch(arch)
    full = _run(tiny_probe, arch, variants, share_prefix=False)
    forked = _run(tiny_probe, arch, variants)
    again = _run(tiny_probe, arch, variants)
    n_rows = len(variants) + 1  # the hidden clean target row of the Patches
    assert full.shared_steps == 0 and full.row_steps == n_rows * STEPS
    assert forked.shared_steps == FORK
    assert forked.row_steps == 2 * FORK + n_rows * (STEPS - FORK)  # 2 distinct rows: SRC and TGT at seed 0
    np.testing.assert_array_equal(forked.images, again.images)  # same compositions: bit for bit
    diff = np.abs(forked.images.astype(int) - full.images.astype(int))
    assert diff.max() <= ROW_TOLERANCE, f"fork differs from the full run by {diff.max()} levels"


def test_unedited_duplicates_replay_the_distinct_rows_bit_for_bit(probe_factory):
    probe = probe_factory("if")
    distinct = [Variant(SRC, (), 0), Variant(TGT, (), 1)]
    alone = _run(probe, "if", distinct, share_prefix=False)
    batch = [distinct[0], distinct[0], distinct[1], distinct[0]]
    forked = _run(probe, "if", batch)
    assert forked.shared_steps == STEPS  # nothing is edited: every step is shared
    assert forked.row_steps == 2 * STEPS
    for row, source in enumerate([0, 0, 1, 0]):
        np.testing.assert_array_equal(forked.images[row], alone.images[source])


def test_no_fork_without_duplicates_or_before_step_zero(probe_factory):
    probe = probe_factory("sd15")
    distinct = [Variant(SRC, (Scale(factor=0.0, sites="cross:0", steps="2:"),), 0), Variant(TGT, (), 1)]
    assert _run(probe, "sd15", distinct).shared_steps == 0  # every row distinct: nothing to share
    from_zero = _sweep_batch("sd15", fork=0)
    assert _run(probe, "sd15", from_zero).shared_steps == 0  # edited from the first step


def test_prefix_end_is_the_first_step_anything_touches(probe_factory):
    probe = probe_factory("sd15")
    plan = make_plan(_sweep_batch("sd15", fork=3), probe.sites, 5)
    assert prefix_end(plan) == 3
    rows, index = distinct_rows(plan)
    assert [r.prompt for r in rows] == [SRC, TGT] and index == [0, 0, 0, 1]
    assert prefix_end(make_plan([Variant(SRC, (), 0)], probe.sites, 5)) == 5


def test_share_prefix_must_be_a_bool(probe_factory):
    with pytest.raises(InterventionError, match="share_prefix must be True or False"):
        probe_factory("sd15").run([Variant(SRC, (), 0)], steps=2, share_prefix="yes")


def test_a_recorded_prefix_is_reused_exactly(probe_factory):
    """A batch forking no later than a recorded prefix run of the same rows reuses it, bit for bit."""
    from diffprobe.engine import PrefixCache

    probe = probe_factory("sd15")
    cache = PrefixCache()
    late = _run(probe, "sd15", _sweep_batch("sd15", fork=3), prefix_cache=cache)
    assert late.row_steps == 2 * 3 + 4 * (STEPS - 3) and cache.hits == 0
    reused = _run(probe, "sd15", _sweep_batch("sd15", fork=2), prefix_cache=cache)
    assert cache.hits == 1 and reused.row_steps == 4 * (STEPS - 2)  # the prefix was not computed again
    fresh = _run(probe, "sd15", _sweep_batch("sd15", fork=2))
    np.testing.assert_array_equal(reused.images, fresh.images)
    later = _run(probe, "sd15", _sweep_batch("sd15", fork=3), prefix_cache=PrefixCache())
    np.testing.assert_array_equal(later.images, late.images)


def test_the_runner_runs_each_pair_and_seed_latest_t_s_first():
    from diffprobe.runner import Cell, prefix_order

    batches = {i: [Cell(pair=p, group=0, t_start=t, seed=0)] for i, (p, t) in enumerate(
        [(0, 0), (0, 5), (0, 10), (1, 0), (1, 5)])}
    assert list(prefix_order(batches)) == [2, 1, 0, 4, 3]
