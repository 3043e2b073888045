"""The split where the match probability and the firing rate both say two neurons."""

import numpy as np

from kilomatch.firing_rates import log_rate_in_clusters, split_at_rates, unit_rates


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
