"""MarketStats: counting tables, derived rates, the class-frequency prior, merging and saving."""

from __future__ import annotations

import json

import pytest
import torch

from stonklib.grpo.market import FILENAME, MarketStats

# (actual, predicted, expected counts: actual_up, actual_down, pred_up, pred_down, pred_unknown,
#  correct_up, correct_down)
UPDATE_TABLE = [
    (["up"], ["up"], (1, 0, 1, 0, 0, 1, 0)),  # right about up
    (["down"], ["down"], (0, 1, 0, 1, 0, 0, 1)),  # right about down
    (["up"], ["down"], (1, 0, 0, 1, 0, 0, 0)),  # wrong: said down
    (["down"], ["up"], (0, 1, 1, 0, 0, 0, 0)),  # wrong: said up (the market-bias failure)
    (["up"], [None], (1, 0, 0, 0, 1, 0, 0)),  # unparsed answer: unknown, counts as wrong
    (["down"], ["unknown"], (0, 1, 0, 0, 1, 0, 0)),  # the parser's explicit unknown
    (["up"], [""], (1, 0, 0, 0, 1, 0, 0)),  # empty string is unknown too
    ([" UP "], ["Up"], (1, 0, 1, 0, 0, 1, 0)),  # case and whitespace are normalised
    ([], [], (0, 0, 0, 0, 0, 0, 0)),  # an empty batch changes nothing
    (["up", "up", "down", "down", "up"], ["up", "down", "down", None, "up"], (3, 2, 2, 2, 1, 2, 1)),  # a mix
]


@pytest.mark.parametrize("actual, predicted, counts", UPDATE_TABLE)
def test_update_counts(actual, predicted, counts):
    stats = MarketStats()
    stats.update(actual, predicted)
    assert tuple(stats.counts().values()) == counts


@pytest.mark.parametrize("actual, predicted, match", [
    (["up"], [], "one prediction per example"),  # lengths differ
    (["sideways"], ["up"], "actual direction #0"),  # actual must be up or down
    (["up", "down"], ["up", "maybe"], "prediction #1"),  # a prediction that is neither a direction nor unknown
    ([None], ["up"], "actual direction #0"),  # a missing label
])
def test_update_rejects_bad_input(actual, predicted, match):
    with pytest.raises(ValueError, match=match):
        MarketStats().update(actual, predicted)


def test_derived_rates_by_hand():
    stats = MarketStats()
    stats.update(["up", "up", "down", "down", "up"], ["up", "down", "down", None, "up"])
    assert stats.n_examples == 5 and stats.n_parsed == 4
    assert stats.up_accuracy == pytest.approx(2 / 3)  # 2 of 3 actual ups called up
    assert stats.down_accuracy == pytest.approx(1 / 2)  # 1 of 2 actual downs called down (the None is wrong)
    assert stats.accuracy == pytest.approx(3 / 5)
    assert stats.balanced_accuracy == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert stats.predicted_up_rate == pytest.approx(2 / 4)  # over parsed predictions only
    assert stats.actual_up_rate == pytest.approx(3 / 5)
    assert stats.parse_rate == pytest.approx(4 / 5)


def test_always_up_model_is_exposed():
    stats = MarketStats()
    stats.update(["up"] * 7 + ["down"] * 3, ["up"] * 10)
    assert stats.accuracy == pytest.approx(0.7)  # looks good...
    assert (stats.up_accuracy, stats.down_accuracy) == (1.0, 0.0)  # ...but never says down
    assert stats.balanced_accuracy == 0.5 and stats.predicted_up_rate == 1.0


def test_rates_undefined_before_data():
    stats = MarketStats()
    for name in ("up_accuracy", "down_accuracy", "accuracy", "balanced_accuracy", "predicted_up_rate",
                 "actual_up_rate", "parse_rate"):
        assert getattr(stats, name) is None, name
    stats.update(["up"], [None])
    assert stats.predicted_up_rate is None and stats.down_accuracy is None and stats.up_accuracy == 0.0


# (actual_up, actual_down, prior, expected up frequency)
CLASS_FREQ_TABLE = [
    (0, 0, 1.0, 0.5),  # defined from the start: the prior alone
    (1, 0, 1.0, 2 / 3),  # one up example moves it, but not to 1
    (3, 1, 1.0, 4 / 6),  # add-one: (3 + 1) / (4 + 2)
    (98, 0, 1.0, 0.99),  # never exactly 1, so 1 / freq(down) stays finite
    (3, 1, 0.5, 3.5 / 5),  # a weaker prior
    (600, 400, 1.0, 601 / 1002),  # tends to the empirical rate
]


@pytest.mark.parametrize("up, down, prior, freq_up", CLASS_FREQ_TABLE)
def test_class_freq(up, down, prior, freq_up):
    freq = MarketStats(actual_up=up, actual_down=down).class_freq(prior)
    assert freq["up"] == pytest.approx(freq_up)
    assert freq["down"] == pytest.approx(1 - freq_up)
    assert 0 < freq["down"] < 1


def test_class_freq_rejects_nonpositive_prior():
    with pytest.raises(ValueError, match="prior"):
        MarketStats().class_freq(0.0)


def _two_shards() -> tuple[MarketStats, MarketStats]:
    a, b = MarketStats(), MarketStats()
    a.update(["up", "down"], ["up", "up"])
    b.update(["down", "down", "up"], ["down", None, "down"])
    return a, b


def test_merge_sums_counts_and_matches_one_pass():
    a, b = _two_shards()
    whole = MarketStats()
    whole.update(["up", "down", "down", "down", "up"], ["up", "up", "down", None, "down"])
    assert a.merge(b) == a + b == sum([a, b]) == whole
    assert a == _two_shards()[0]  # merge returns a new record
    with pytest.raises(TypeError):
        a.merge({"actual_up": 1})


def test_tensor_round_trip_and_all_reduce_shape():
    a, b = _two_shards()
    ta, tb = a.as_tensor(), b.as_tensor()
    assert ta.dtype == torch.int64 and ta.shape == (len(MarketStats.count_fields()),)
    assert MarketStats.from_tensor(ta + tb) == a + b  # what an all_reduce(SUM) over two ranks yields
    with pytest.raises(ValueError, match="expected 7 counts"):
        MarketStats.from_tensor(torch.zeros(3, dtype=torch.int64))


def test_dict_round_trip_is_json():
    a, _ = _two_shards()
    d = json.loads(json.dumps(a.to_dict()))  # JSON-able, None for undefined rates
    assert d["actual_up"] == 1 and d["down_accuracy"] == 0.0 and d["class_freq"]["up"] == pytest.approx(0.5)
    assert MarketStats.from_dict(d) == a  # derived keys are ignored
    assert MarketStats.from_dict({}) == MarketStats()
    assert json.loads(json.dumps(MarketStats().to_dict()))["up_accuracy"] is None


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, float("nan")])
def test_from_dict_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="actual_up"):
        MarketStats.from_dict({"actual_up": bad})


def test_save_is_atomic_and_loads_back(tmp_path):
    a, b = _two_shards()
    path = a.save(tmp_path)
    assert path == tmp_path / FILENAME
    assert MarketStats.load(tmp_path) == a
    (a + b).save(path)  # overwrite via os.replace
    assert MarketStats.load(path) == a + b
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]  # no temp files left behind
    nested = (a + b).save(tmp_path / "run" / "stats.json")
    assert nested.exists() and MarketStats.load(nested) == a + b


def test_failed_save_keeps_old_file(tmp_path, monkeypatch):
    a, b = _two_shards()
    a.save(tmp_path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("stonklib.grpo.market.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        b.save(tmp_path)
    assert MarketStats.load(tmp_path) == a
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]


def test_load_names_the_file(tmp_path):
    path = tmp_path / FILENAME
    path.write_text("{not json")
    with pytest.raises(ValueError, match="market_stats.json"):
        MarketStats.load(tmp_path)
