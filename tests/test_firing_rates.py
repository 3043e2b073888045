"""The split where the match probability and the firing rate both say two neurons, and the
split in time at a step of firing rate that no probability overrules."""

import numpy as np

from kilomatch.firing_rates import (RATE_STEP_SURE, log_rate_in_clusters, rate_spread,
                                    split_at_rates, split_rate_steps, unit_rates)


def test_rates_are_spikes_over_the_span_of_each_session():
    spikes = [np.array([0.0, 500.0, 1000.0]), np.array([10.0, 2000.0]), np.array([]),
              np.arange(0.0, 4000.0, 100.0), np.array([1e6 + 5.0, 1e6 + 700.0]),
              np.array([1e6 + 1005.0])]
    session = np.array([0, 0, 1, 1, 2, 2])
    # session 0 spans 2000 ms (earliest to latest spike of its units), session 1 3900 ms,
    # session 2 (cut from a concatenated recording: it starts at 10^6 ms) 1000 ms; no spike
    # counts as one
    np.testing.assert_allclose(unit_rates(spikes, session), [3 / 2000, 2 / 2000, 1 / 3900,
                                                             40 / 3900, 2 / 1000, 1 / 1000])


def test_a_neuron_the_sorter_split_fires_at_the_sum_of_its_units():
    labels = np.array([0, 0, 0, -1])
    session = np.array([1, 2, 2, 2])
    rate = np.array([4.0, 1.0, 3.0, 5.0])
    np.testing.assert_allclose(np.exp(log_rate_in_clusters(labels, session, rate)),
                               [4.0, 4.0, 4.0, 5.0])


def _study(rate_of_second_neuron, across, rate_jitter):
    """Clusters of six units (sessions 0-5), the last three another neuron at
    ``rate_of_second_neuron`` Hz in cluster 0 only, their pairs across at probability
    ``across`` (0.95 within); clusters 1-9 one neuron each, at 10 Hz times a factor
    drawn within +-``rate_jitter`` (log)."""
    g = np.random.default_rng(3)
    labels = np.repeat(np.arange(10), 6)
    session = np.tile(np.arange(6), 10)
    rate = 10.0 * np.exp(g.uniform(-rate_jitter, rate_jitter, 60))
    rate[:3], rate[3:6] = 10.0, rate_of_second_neuron
    pairs, probability = [], []
    for c in range(10):
        for i in range(6):
            for j in range(i + 1, 6):
                pairs.append((6 * c + i, 6 * c + j))
                probability.append(across if c == 0 and i < 3 <= j else 0.95)
    return labels, np.array(pairs), np.array(probability), session, rate


def test_a_cluster_is_split_where_probability_and_rate_both_say_two_neurons():
    labels, pairs, probability, session, rate = _study(40.0, 0.2, 0.1)
    split, removed, limit = split_at_rates(labels, pairs, probability, session, rate)
    assert split[0] != split[3] and len(np.unique(split[:3])) == 1 \
        and len(np.unique(split[3:6])) == 1
    assert sorted(map(tuple, removed)) == [(i, j) for i in range(3) for j in range(3, 6)]
    assert (split[6:] == labels[6:]).all()
    assert np.log(1.5) <= limit < np.log(4.0)
    # either alone is not enough: rates alike, or the probability across 0.6
    assert len(split_at_rates(*_study(11.0, 0.2, 0.1))[1]) == 0
    assert len(split_at_rates(*_study(40.0, 0.6, 0.1))[1]) == 0


def test_where_rates_are_not_stable_nothing_is_cut():
    # one neuron's rate moves 5x from day to day in this study: a 4x step says nothing
    labels, pairs, probability, session, rate = _study(40.0, 0.2, np.log(5.0))
    split, removed, limit = split_at_rates(labels, pairs, probability, session, rate)
    assert len(removed) == 0 and limit > np.log(4.0)


def _steps(rates_of_cluster_0):
    """Cluster 0 of six units (sessions 0-5) at the rates given (Hz); clusters 1-9 one
    neuron each, at 10 Hz within +-5% (one neuron's spread learns the 1.5x floor).
    Returns labels, session, log rates and the spread."""
    g = np.random.default_rng(5)
    labels = np.repeat(np.arange(10), 6)
    session = np.tile(np.arange(6), 10)
    rate = 10.0 * np.exp(g.uniform(-0.05, 0.05, 60))
    rate[:6] = rates_of_cluster_0
    log_rate, limit = rate_spread(labels, session, rate)
    return labels, session, log_rate, limit


def test_a_step_of_firing_rate_in_time_is_cut_whatever_the_probability():
    labels, session, log_rate, limit = _steps([1.0, 1.1, 0.9, 8.0, 7.5, 8.5])
    assert np.isclose(limit, np.log(1.5))
    split, removed = split_rate_steps(labels, session, log_rate, limit)
    assert split[0] == split[1] == split[2] != split[3] == split[4] == split[5]
    assert sorted(map(tuple, removed)) == [(i, j) for i in range(3) for j in range(3, 6)]
    assert (split[6:] == labels[6:]).all()
    # a lone unit at either end becomes a unit in no cluster
    split, removed = split_rate_steps(*_steps([1.0, 8.0, 7.5, 8.5, 8.2, 7.9]))
    assert split[0] == -1 and len(np.unique(split[1:6])) == 1 and len(removed) == 5


def test_no_cut_where_the_rates_do_not_step_beyond_doubt():
    # rates that alternate (a state that comes and goes) are no step in time
    assert len(split_rate_steps(*_steps([1.0, 8.0, 1.1, 7.5, 0.9, 8.5]))[1]) == 0
    # a step of 3x: under RATE_STEP_SURE spreads (1.5 ** 3 = 3.4x)
    assert RATE_STEP_SURE * np.log(1.5) > np.log(3.0)
    assert len(split_rate_steps(*_steps([1.0, 1.1, 0.9, 3.0, 2.9, 3.1]))[1]) == 0
    # a late rate within one neuron's spread of an early one: the gap is not clean
    assert len(split_rate_steps(*_steps([1.0, 1.1, 0.9, 8.0, 7.5, 1.4]))[1]) == 0


def test_the_pipeline_step_records_both_splits_and_why():
    from kilomatch import curation
    from kilomatch.pipeline import split_at_rates as pipeline_split
    # cluster 0 steps 8x in time (its pairs across sure: 0.99); cluster 1 holds two
    # neurons at 1 and 3 Hz the probability doubts (0.2 across), recorded in turn
    labels = np.repeat(np.arange(10), 6)
    session = np.tile(np.arange(6), 10)
    g = np.random.default_rng(5)
    rate = 10.0 * np.exp(g.uniform(-0.05, 0.05, 60))
    rate[:6] = [1.0, 1.1, 0.9, 8.0, 7.5, 8.5]
    rate[6:12] = [1.0, 3.0, 1.0, 3.0, 1.0, 3.0]
    pairs = np.array([(i, j) for c in range(10) for i in range(6 * c, 6 * c + 6)
                      for j in range(i + 1, 6 * c + 6)])
    p = np.where((pairs[:, 0] // 6 == 1) & (pairs[:, 0] % 2 != pairs[:, 1] % 2), 0.2, 0.99)
    cur = curation.CurationResult(labels, labels, np.array([[100, 101]]),
                                  np.array([curation.SPLIT], np.int8))
    pipeline_split(cur, pairs, p, session, rate / 1000.0)
    assert len(np.unique(cur.labels[:6])) == 2 and len(np.unique(cur.labels[6:12])) == 2
    reasons = cur.removed_reason.tolist()
    assert reasons == [curation.SPLIT] + [curation.RATE_STEP] * 9 + [curation.RATE] * 9
    assert curation.REASONS[curation.RATE_STEP] == "split_at_rate_step"
