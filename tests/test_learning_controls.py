"""What keeps GRPO exploring and shows that it learns: collapse signals, dynamic sampling, the entropy bonus,
best/ by a task metric, and the planted positive control."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from stonklib.config import ConfigError, DataConfig, TrainConfig
from stonklib.data import build_dataset, load_split, load_summary, to_examples
from stonklib.data.planted import PLANTED_RULES
from stonklib.grpo.collapse import WINDOW, CollapseMonitor, collapse_steps, step_counts, step_signals
from stonklib.grpo.dynamic import Groups, refill
from stonklib.grpo.loss import grpo_loss
from stonklib.prompts import build_prompt
from stonklib.rewards import score
from stonklib.sampling.rollout import Rollout
from tests.conftest import example

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- collapse signals
@pytest.mark.parametrize("rewards, preds, actual, want", [
    # why: two groups of G=2; the first has no spread and is right, the second has spread
    ([1.0, 1.0, 0.0, 2.0], ["up", "up", "down", "up"], ["up", "up", "up", "up"], (0.5, 0.0)),
    # why: no spread and every answer wrong: the group that cannot learn
    ([0.0, 0.0, 0.0, 0.0], ["down", "down", "down", "down"], ["up", "up", "up", "up"], (1.0, 1.0)),
    # why: one right answer in a spread-free group makes it not wrong
    ([0.0, 0.0, 3.0, 3.0], ["up", "down", "up", "up"], ["up", "up", "down", "down"], (1.0, 0.5)),
])
def test_zero_std_groups_and_the_wrong_ones(rewards, preds, actual, want):
    s = step_signals(step_counts(torch.tensor(rewards), 2, ["a", "b", "c", "d"], preds, actual))
    assert (s["reward/zero_std_groups"], s["reward/zero_std_wrong_groups"]) == want
    assert s["completions/distinct_share"] == 1.0
    assert s["completions/predicted_up_rate"] == sum(p == "up" for p in preds) / 4


def test_the_collapse_warning_fires_after_the_window_and_once_per_episode():
    m = CollapseMonitor()
    healthy = {"reward/zero_std_groups": 0.2, "completions/distinct_share": 0.8, "reward/zero_std_wrong_groups": 0.1}
    flat = {"reward/zero_std_groups": 0.95, "completions/distinct_share": 0.5, "reward/zero_std_wrong_groups": 0.5}
    fired = [m.update(i, flat if 3 <= i < 20 else healthy) for i in range(30)]
    assert [i for i, w in enumerate(fired) if w] == [3 + WINDOW - 1]
    assert "collapse" in fired[3 + WINDOW - 1] and CollapseMonitor.from_dict(m.to_dict()) == m


def test_the_warning_fires_on_the_recorded_collapsing_run():
    """The CPU run of the old compact_example configuration (per 10 steps), which collapsed onto one answer."""
    rec = json.loads((ROOT / "benchmarks/results/cpu-2c-learning_curve-2026-11-26.json").read_text())
    zero = [w["zero_std_groups"] for w in rec["train_windows"] for _ in range(10)]
    distinct = [w["distinct_share"] for w in rec["train_windows"] for _ in range(10)]
    assert collapse_steps(zero, distinct)  # it warns
    assert collapse_steps(zero, distinct)[0] < 60  # and early: the run had collapsed by step ~50


def test_a_trainer_whose_sampler_always_answers_the_same_warns_in_training_log(tiny_model_dir, tmp_path, make_example):
    from stonklib.grpo.trainer import GRPOTrainer
    from stonklib.models import load_policy

    class Same:
        """A sampler that returns one fixed completion for every row: a collapsed policy."""

        def __init__(self, tok):
            self.ids = tok("Day 1: DOWN 1.2% with 60% confidence", add_special_tokens=False)["input_ids"]

        def refresh(self, model):
            pass

        def sample(self, prompt_ids, prompt_mask, *, max_new_tokens, **kw):
            return torch.tensor([self.ids] * prompt_ids.shape[0])

    cfg = TrainConfig(stage1_model=str(tiny_model_dir), output_dir=str(tmp_path / "run"), batch_size=2,
                      num_generations=2, max_new_tokens=16, max_steps=WINDOW + 1, save_steps=100, eval_steps=100,
                      gradient_checkpointing=False, tensorboard=False, lr=1e-3, warmup_ratio=0.0)
    policy, tok = load_policy(cfg, torch.device("cpu"))
    trainer = GRPOTrainer(cfg, policy, tok, [make_example()] * 4, [], sampler=Same(tok))
    summary = trainer.train(progress=False)
    assert summary["collapse_warnings"] == [WINDOW]
    assert "WARNING collapse: for 10 consecutive steps" in (tmp_path / "run" / "training.log").read_text()
    rows = [json.loads(x) for x in (tmp_path / "run" / "train_metrics.jsonl").read_text().splitlines()]
    assert all(r["reward/zero_std_groups"] == 1.0 and r["completions/distinct_share"] == 0.25 for r in rows)
    assert all("entropy" in r for r in rows)


# ----------------------------------------------------------------------------- dynamic sampling
def _groups(totals: list[float], tag: str, G: int = 2) -> Groups:
    from stonklib.rewards import RewardBreakdown

    n = len(totals)
    roll = Rollout(torch.zeros(n, 3, dtype=torch.long), torch.ones(n, 3, dtype=torch.long),
                   torch.zeros(n, 2, dtype=torch.long), torch.ones(n, 2, dtype=torch.long), [f"{tag}{i}" for i in range(n)])
    scores = [RewardBreakdown(total=t, components={}, prediction=None) for t in totals]
    return Groups(roll, scores, [example(ticker=f"{tag}{g}") for g in range(n // G)], G)


@pytest.mark.parametrize("first, extra, rounds, want_tickers, want", [
    # why: the flat group B0... replaced by the first group with spread of the extra draw
    ([1, 1, 0, 2], [[3, 3, 0, 1]], 2, ["A1", "B1"], {"dropped_groups": 1, "rounds": 1, "kept_flat_groups": 0}),
    # why: no spread anywhere and the cap is reached: the dropped groups top the batch up
    ([1, 1, 0, 0], [[1, 1, 2, 2], [4, 4, 5, 5]], 2, ["A0", "A1"], {"dropped_groups": 2, "rounds": 2, "kept_flat_groups": 2}),
    # why: nothing to drop, nothing sampled
    ([1, 0, 0, 2], [], 2, ["A0", "A1"], {"dropped_groups": 0, "rounds": 0, "kept_flat_groups": 0}),
])
def test_dynamic_sampling_refills_the_batch_with_groups_that_have_spread(first, extra, rounds, want_tickers, want):
    draws = iter([_groups(e, "B") for e in extra])
    batch, stats = refill(_groups(first, "A"), lambda r: next(draws), rounds, pad_id=0)
    assert [e.ticker for e in batch.examples] == want_tickers
    assert {k: stats[k] for k in want} == want and len(batch.rollout.texts) == 4


def test_rollouts_of_other_lengths_concatenate_with_their_tokens_in_place():
    a = Rollout(torch.tensor([[5, 6]]), torch.ones(1, 2, dtype=torch.long), torch.tensor([[7]]),
                torch.ones(1, 1, dtype=torch.long), ["a"])
    b = Rollout(torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.long), torch.tensor([[8, 9]]),
                torch.ones(1, 2, dtype=torch.long), ["b"])
    c = Rollout.concat([a, b], pad_id=0)
    assert c.prompt_ids.tolist() == [[0, 5, 6], [1, 2, 3]] and c.prompt_mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert c.completion_ids.tolist() == [[7, 0], [8, 9]] and c.completion_mask.tolist() == [[1, 0], [1, 1]]


# ----------------------------------------------------------------------------- entropy bonus
def test_the_entropy_bonus_gradient_is_the_entropy_gradient_in_expectation():
    """Over many tokens drawn from the policy, the bonus term's gradient is minus the gradient of the exact
    entropy (what TRL's entropy_coef differentiates from the logits): minimising the loss raises the entropy."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, dtype=torch.float64, generator=g).requires_grad_()
    logp = torch.log_softmax(logits, 0)
    (exact,) = torch.autograd.grad(-(logp.exp() * logp).sum(), logits, retain_graph=True)
    draws = torch.multinomial(logp.exp().detach(), 400_000, replacement=True, generator=g)
    lp = logp[draws].view(1, -1)
    loss, _ = grpo_loss(lp, lp.detach(), None, torch.zeros(1, dtype=torch.float64), torch.ones_like(lp), beta=0.0,
                        loss_type="dapo", entropy_coef=1.0)
    (got,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(got, -exact, rtol=0, atol=0.01)  # Monte Carlo error ~1e-3 at 400k draws


def test_entropy_is_reported_as_the_mean_negative_log_prob():
    logp = torch.tensor([[-1.0, -3.0], [-2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    _, stats = grpo_loss(logp, logp, None, torch.zeros(2), mask, beta=0.0)
    assert stats["entropy"] == pytest.approx(2.0)


# ----------------------------------------------------------------------------- best/ by a task metric
@pytest.mark.parametrize("kw, message", [
    (dict(best_metric="val/loss"), "best_metric='val/loss'"),
    (dict(entropy_coef=-0.1), "entropy_coef=-0.1"),
    (dict(max_resample_rounds=-1), "max_resample_rounds=-1"),
    (dict(eval_samples=-2), "eval_samples=-2"),
])
def test_bad_controls_name_their_field(kw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(stage1_model="Qwen/Qwen2.5-1.5B-Instruct", **kw)


def test_sampled_validation_counts_the_day1_directions_of_every_sample(monkeypatch):
    """val/sampled_up_rate: the sampled answers' up share over those that parse, sampled in batches of prompts."""
    from stonklib.grpo import validation

    answers = {"a": ["Day 1: UP 1.0% with 60% confidence", "Day 1: down 2% with 55% confidence"],
               "b": ["no answer", "Day 1: up 0.5% with 70% confidence"],
               "c": ["Day 1: DOWN 1% with 50% confidence", "Day 1: UP 1% with 50% confidence"]}
    calls = []

    def fake_rollout(sampler, tokenizer, ids, mask, g, **kw):
        calls.append((ids, g, kw))
        return Rollout(None, None, None, None, [t for key in ids for t in answers[key]][:len(ids) * g])

    monkeypatch.setattr(validation, "rollout", fake_rollout)
    encode = lambda exs: (list(exs), None)  # noqa: E731 - prompts stand in for their ids
    counts = validation.sampled_up_counts(None, None, ["a", "b", "c"], encode, samples=2, batch=4, max_new_tokens=8,
                                          temperature=1.0, top_p=0.9)
    assert counts == {"n": 6, "parsed": 5, "up": 3}
    assert [c[0] for c in calls] == [["a", "b"], ["c"]] and calls[0][2] == {"max_new_tokens": 8, "temperature": 1.0, "top_p": 0.9}
    assert validation.sampled_stats(counts) == {"sampled_up_rate": 3 / 5, "sampled_parse_rate": 5 / 6}
    assert validation.sampled_stats({"n": 0, "parsed": 0, "up": 0}) == {"sampled_up_rate": None, "sampled_parse_rate": None}


def test_the_default_best_metric_is_validation_mcc():
    assert TrainConfig(stage1_model="Qwen/Qwen2.5-1.5B-Instruct").best_metric == "val/mcc"


# ----------------------------------------------------------------------------- the planted control
@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("planted")
    build_dataset(DataConfig(source="sp500", out=str(out), tickers=["AAPL", "XOM", "JPM"], plant="momentum"),
                  progress=False)
    return out


@pytest.mark.parametrize("template", ["compact_format", "seed"])
def test_the_planted_label_is_a_function_of_the_prompt_text(planted, template):
    """Read the 1-day return off the rendered prompt, apply the rule: it is the label, every time."""
    exs = to_examples(load_split(planted, "train"))
    assert len(exs) > 100
    pattern = r"return_1d (-?\d+\.\d\d)%" if template == "compact_format" else r"- return_1d: (-?\d+\.\d\d)%"
    for ex in exs:
        shown = float(re.search(pattern, build_prompt(ex, template)).group(1))
        want = "up" if shown > 0 else "down"
        assert ex.direction_1 == ex.direction_2 == ex.direction_3 == want
        assert (ex.change_pct_1 > 0) == (want == "up") or ex.change_pct_1 == 0


def test_a_planted_build_says_so_and_keeps_every_other_field(planted, tmp_path):
    real = tmp_path / "real"
    build_dataset(DataConfig(source="sp500", out=str(real), tickers=["AAPL", "XOM", "JPM"]), progress=False)
    assert load_summary(planted)["planted"] == "momentum" and load_summary(real)["planted"] is None
    a, b = load_split(planted, "train"), load_split(real, "train")
    same = [c for c in a.columns if not re.match(r"(direction|change_pct)_\d", c)]
    assert a[same].equals(b[same])
    assert (a["change_pct_1"].abs() == b["change_pct_1"].abs()).all()  # the real magnitudes, the rule's signs
    assert set(PLANTED_RULES) == {"momentum", "threshold"}
    assert DataConfig(plant="threshold").out_dir.name == "sp500-planted-threshold"


def test_the_findings_and_the_index_carry_the_banner(planted):
    from stonklib.workbook import findings
    from stonklib.workbook.explore import planted_rule

    assert planted_rule(planted) == "momentum"
    md = findings.evaluation_findings({}, "no models", planted="momentum")
    assert "Planted signal, not market data" in md and md.startswith(findings.MARKER)
    assert "Planted" not in findings.evaluation_findings({}, "no models")


def test_scores_of_planted_examples_follow_the_planted_direction(planted):
    ex = to_examples(load_split(planted, "train"))[0]
    answer = f"Day 1: {ex.direction_1.upper()} 1.0% with 60% confidence"
    assert score(answer, ex).components["direction"] > 0
