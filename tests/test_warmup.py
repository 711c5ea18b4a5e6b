"""The format warm-up: targets written by code, its config's checks, its loop, crash and resume.

Targets are tables: each row is an example variant, its direction source and what the target must be.
The loop trains the tiny random Llama for a few steps and checks that the target loss falls and that
every output a run promises is there; the crash test SIGKILLs ``stonk warmup`` after a checkpoint,
resumes it and compares with an uninterrupted run, line for line.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from stonklib.config import ConfigError, DataConfig, WarmupConfig
from stonklib.config.stages import JUSTIFICATION_VALUES, check_justification
from stonklib.data import build_dataset
from stonklib.grpo.runlog import read_jsonl
from stonklib.prompts import build_prompt
from stonklib.rewards import parse_all
from stonklib.warmup.targets import (
    build_target,
    build_targets,
    shown_values,
    shown_volume_high,
    targets_for,
    volume_side,
)
from tests.conftest import example


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sp500-warmup")
    build_dataset(DataConfig(source="sp500", out=str(out), tickers=["AAPL", "MSFT", "XOM", "JPM"]), progress=False)
    return out


# ----------------------------------------------------------------------------- targets
@pytest.mark.parametrize("source, over, want", [
    ("label", {}, ("up", "down", "up")),  # why: the label ablation copies the three true directions
    ("label", {"direction_1": "down", "direction_2": "up", "direction_3": "down"}, ("down", "up", "down")),
    ("momentum", {"return_1d": -0.4975}, ("down", "down", "down")),  # why: the shown 1-day return fell
    ("momentum", {"return_1d": 0.8}, ("up", "up", "up")),  # why: and here it rose
])
def test_directions_follow_their_source(source, over, want):
    t = build_target(example(**over), source)
    assert t.directions == want
    days = parse_all(t.text)
    assert tuple(days[k].direction for k in (1, 2, 3)) == want


def test_a_target_is_the_rewards_format_citing_values_its_prompt_shows():
    ex = example(volatility_10d=1.26)
    t = build_target(ex, "coin", seed=3)
    assert t.format == 1.0 and t.data_utilization == 3.0  # all three lines well formed, >= 5 grounded values
    days = parse_all(t.text)
    assert all(days[k].well_formatted and days[k].percentage == 1.26 and 50 <= days[k].confidence <= 80
               for k in (1, 2, 3))  # the move is the shown 10-day volatility, as the prompt prints it (two decimals)
    assert t.text[slice(*t.direction_span)] == t.directions[0]
    prompt = build_prompt(ex, "compact_format")
    justification = t.text.split("Justification: ", 1)[1]
    for number in re.findall(r"\d+\.\d+|\d{4}-\d{2}-\d{2}", justification):
        assert number in prompt, f"{number} is cited but the prompt does not show it"


def test_the_coin_trains_both_faces_of_day_one_and_draws_days_two_and_three():
    exs = [example(ticker=f"T{i}", direction_1=("up", "down")[i % 2], direction_2=("up", "down")[i % 3 == 0])
           for i in range(600)]
    pairs, skipped = build_targets(exs, "coin", seed=1)
    assert len(pairs) == 600 and sum(skipped.values()) == 0
    assert all([t.directions[0] for t in ts] == ["up", "down"] for _, ts in pairs)  # both faces, every prompt
    assert all(ts[0].directions[1:] == ts[1].directions[1:] for _, ts in pairs)
    ups = sum(ts[0].directions[1] == "up" for _, ts in pairs)
    assert 240 <= ups <= 360  # day 2: 600 fair coins, within 4.9 standard deviations of 300
    agree = sum(ts[0].directions[1] == ex.direction_2 for ex, ts in pairs)
    assert 240 <= agree <= 360  # the coin knows nothing of the label
    again, _ = build_targets(exs, "coin", seed=1)
    other, _ = build_targets(exs, "coin", seed=2)
    texts = lambda ps: [t.text for _, ts in ps for t in ts]  # noqa: E731
    assert texts(again) == texts(pairs) and texts(other) != texts(pairs)  # seeded
    assert [len(targets_for(ex, "label")) for ex in exs[:3]] == [1, 1, 1]


@pytest.mark.parametrize("ratio, high", [
    (1.2, True),  # why: the day's volume above its 10-day average
    (0.94, False),
    (0.996, True),  # why: read as the prompt prints it, 1.00
    (0.994, False),  # why: and 0.99 here
])
def test_the_volume_source_reads_the_shown_volume_ratio(ratio, high):
    ex = example(volume_ratio=ratio)
    assert shown_volume_high(ex) is high
    if high:
        assert f"volume_ratio {ratio:.2f}" in build_prompt(ex, "compact_format")  # the prompt's metrics line
    for seed in (1, 4):  # the two sides: a high ratio means down under seed 1 and up under seed 4
        side = volume_side(seed)
        want = side if high else {"up": "down", "down": "up"}[side]
        assert targets_for(ex, "volume", seed=seed)[0].directions == (want, want, want)
    assert {volume_side(s) for s in (1, 4)} == {"up", "down"}


def test_the_volume_source_knows_nothing_of_the_label():
    # 1,000 examples: ratios spread over 0.50-1.49, labels from an unrelated draw
    exs = [example(ticker=f"T{i}", volume_ratio=0.5 + (i * 7 % 100) / 100, direction_1=("up", "down")[(i * 7919) % 13 < 6])
           for i in range(1000)]
    pairs, skipped = build_targets(exs, "volume", seed=4)
    assert sum(skipped.values()) == 0 and all(len(ts) == 1 for _, ts in pairs)  # one target: no faces
    day1 = [ts[0].directions[0] for _, ts in pairs]
    assert day1.count("up") == 500  # half the ratios are >= 1.00
    agree = sum(d == ex.direction_1 for (ex, _), d in zip(pairs, day1, strict=True))
    assert 400 <= agree <= 600


@pytest.mark.parametrize("ratios, want", [
    ([1.2, 1.3, 1.4, 0.8], {"up": 2.0, "down": 2 / 3}),  # why: 3 of 4 high (down under seed 1): each side weighs 2 in all
    ([1.2, 0.8], {"up": 1.0, "down": 1.0}),  # why: already even: unchanged
    ([1.2, 1.3], {"down": 1.0}),  # why: one side only: nothing to balance
])
def test_the_volume_sides_weigh_the_same_in_the_loss(ratios, want):
    pairs, _ = build_targets([example(ticker=f"T{i}", volume_ratio=r) for i, r in enumerate(ratios)], "volume", seed=1)
    got = {t.directions[0]: t.weight for _, ts in pairs for t in ts}
    assert got == pytest.approx(want)


def test_examples_without_a_cited_value_are_skipped_and_counted():
    nan = float("nan")
    pairs, skipped = build_targets([example(), example(return_5d=nan), example(volatility_10d=nan)])
    assert len(pairs) == 1 and skipped == {"missing_value": 2, "too_few_grounded_values": 0}


def test_every_justification_value_is_one_the_prompts_show():
    assert set(shown_values(example())) == set(JUSTIFICATION_VALUES)


# ----------------------------------------------------------------------------- the day-1 balance
@pytest.mark.parametrize("up, down, mean_grad", [
    # (log p(up), log p(down)) per example -> d loss / d log-odds of each example (its weight 1)
    ([-0.1, -3.0], [-3.0, -0.1], 0.0),  # why: leans that cancel are left alone, however strong each is
    ([-0.2, -0.3], [-2.0, -2.5], 2.0),  # why: a shared lean up is pulled back by the batch's mean log-odds
    ([-2.0], [-0.2], -1.8),  # why: one example: its own lean is the batch's
])
def test_the_batch_balance_pulls_only_the_batch_mean_lean(up, down, mean_grad):
    import torch

    from stonklib.warmup.trainer import batch_balance_loss

    u = torch.tensor(up, requires_grad=True)
    d = torch.tensor(down, requires_grad=True)
    # the gradient on an example's log-odds: with u = a + o/2 and d = a - o/2, it is (du - dd) / 2
    batch_balance_loss(u, d, weight=1.0).backward()
    either = -torch.sigmoid(torch.tensor(up) - torch.tensor(down))  # -(p_up share), from -log(p_up + p_down)
    got = (u.grad - d.grad) / 2 - (either + 0.5)  # the centring's part, without the 'answer one of the two' part
    assert torch.allclose(got, torch.full_like(got, mean_grad), atol=1e-5)


@pytest.mark.parametrize("odds, spread, apart", [
    ([0.1, -0.1], 1.0, True),  # why: narrower than asked: each lean grows, in its own direction
    ([2.0, -2.0], 1.0, False),  # why: wider than asked: pulled in
    ([0.3, -0.3], 0.0, None),  # why: no spread term: only the centring (zero here) acts
])
def test_the_spread_term_widens_the_leans_each_in_its_own_direction(odds, spread, apart):
    import torch

    from stonklib.warmup.trainer import batch_balance_loss

    def grad(spread):
        o = torch.tensor(odds, requires_grad=True)
        batch_balance_loss(o / 2, -o / 2, weight=1.0, spread=spread).backward()  # mean 0: no centring pull
        return o.grad

    g = grad(spread) - grad(0.0)  # the spread term's own gradient
    if apart is None:
        assert torch.allclose(g, torch.zeros_like(g))
    else:
        outward = -g * torch.sign(torch.tensor(odds))  # > 0: a descent step moves that lean outward
        assert bool((outward > 0).all()) is apart and bool((outward < 0).all()) is (not apart)


def test_the_two_words_probability_is_pushed_to_one():
    import torch

    from stonklib.warmup.trainer import batch_balance_loss

    u = torch.tensor([-3.0, -2.0], requires_grad=True)  # both words unlikely: mass elsewhere
    d = torch.tensor([-3.0, -2.0], requires_grad=True)
    batch_balance_loss(u, d, weight=2.0).backward()
    assert (u.grad < 0).all() and (d.grad < 0).all()  # descent raises both
    assert torch.allclose(u.grad, d.grad)  # and neither more: no lean is taught


def test_day_one_log_probs_read_the_faces_rows():
    import torch

    from stonklib.warmup.trainer import day1_log_probs

    logp = torch.tensor([[-1.0, -0.5, -2.0], [-1.0, -0.7, -2.0], [-0.3, -0.1, -0.2], [-0.3, -0.9, -0.4]])
    word = torch.tensor([[0.0, 1.0, 0.0]] * 4)
    up, down = day1_log_probs(logp, word, examples=2)
    assert up.tolist() == pytest.approx([-0.5, -0.1]) and down.tolist() == pytest.approx([-0.7, -0.9])
    assert day1_log_probs(logp, word, examples=4) is None  # one target each (momentum, label): no faces


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("kw, message", [
    (dict(direction_source="abc"), "direction_source='abc'"),  # why: a typo must not train on labels or nothing
    (dict(justification="On {date} it closed at {close}."), "cites 2 distinct value"),  # why: data_utilization < 3
    (dict(justification="{close} {previous_close} {day_change_pct} {return_1d} {return_5d}"),
     "cites 4 distinct"),  # why: the 1-day return and the day's change are one number
    (dict(justification="{close} {eps} {date} {volume} {return_5d}"), "cites ['eps']"),  # why: no prompt shows it
    (dict(justification="{close"), "not a valid template"),
    (dict(model="models/does-not-exist"), "stonk model fetch"),
    (dict(batch_size=4, grad_accum_steps=3), "grad_accum_steps"),
    (dict(coin_balance="median"), "coin_balance='median'"),  # why: a typo must not fall back to another loss
])
def test_a_bad_warmup_config_names_the_field(kw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        WarmupConfig(**kw)


def test_a_bad_warmup_config_fails_before_any_model_loads(capsys):
    from stonklib.cli import main

    t0 = time.perf_counter()
    assert main(["warmup", "--direction_source", "labels", "--model", "Qwen/Qwen2.5-1.5B-Instruct"]) == 2
    assert "direction_source='labels'" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 5  # no model, no data was touched


def test_the_default_justification_copies_the_metrics_line_five_values():
    from stonklib.config.stages import SENTENCE_JUSTIFICATION

    assert len(check_justification(WarmupConfig().justification)) == 5
    assert len(check_justification(SENTENCE_JUSTIFICATION)) == 7  # the first measured template still passes


# ----------------------------------------------------------------------------- the loop
def _cfg(model_dir, data, out, **kw) -> WarmupConfig:
    base = dict(model=str(model_dir), data=str(data), output_dir=str(out), device="cpu", max_steps=4, batch_size=2,
                max_train_samples=16, max_eval_samples=3, prompt_version="compact_format", max_prompt_tokens=400,
                max_new_tokens=8, lr=5e-3, warmup_ratio=0.0, lr_scheduler="constant", save_steps=2, eval_steps=4,
                gradient_checkpointing=False, tensorboard=False, fast_sampler=True)
    return WarmupConfig(**(base | kw))


def test_the_warmup_lowers_the_target_loss_and_writes_a_complete_run(tiny_model_dir, small_data, tmp_path):
    from stonklib.warmup import run_warmup

    out = tmp_path / "warmup"
    summary = run_warmup(_cfg(tiny_model_dir, small_data, out, max_steps=12, lr=1e-2, save_steps=4, eval_steps=12),
                         progress=False)
    skipped = sum(summary["skipped_targets"].values())  # two of the five metrics printing alike: counted, not trained
    assert skipped <= 2 and summary["steps"] == 12
    assert summary["train_pairs"] == 16 - skipped and summary["train_targets"] == 2 * summary["train_pairs"]
    rows = read_jsonl(out / "train_metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 12 and sum(losses[-3:]) < 0.98 * sum(losses[:3])  # it learns (a random tiny model, slowly)
    val = [r for r in rows if "val/parse_rate" in r]
    assert [r["step"] for r in val] == [0, 12]  # eval_at_start: the 'before'
    answers = read_jsonl(out / "warmup_training_log.jsonl")
    assert {r["step"] for r in answers} == {0, 12} and len(answers) == 6
    for d in ("checkpoint-4", "checkpoint-8", "checkpoint-12", "final"):
        assert (out / d / "adapter_model.safetensors").is_file(), d
    log = (out / "training.log").read_text()
    assert f"warm-up targets: {summary['train_pairs']} examples, {summary['train_targets']} targets" in log and "config" in log
    assert json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())["step"] == 12
    assert summary["final"] == str(out / "final")


@pytest.mark.parametrize("balance", ["prompt", "batch"])
def test_each_coin_balance_trains_and_logs_the_day_one_lean(tiny_model_dir, small_data, tmp_path, balance):
    from stonklib.warmup import run_warmup
    from stonklib.warmup.trainer import WarmupTrainer

    out = tmp_path / balance
    cfg = _cfg(tiny_model_dir, small_data, out, max_steps=3, save_steps=3, eval_steps=3, eval_at_start=False,
               coin_balance=balance)
    run_warmup(cfg, progress=False)
    rows = [r for r in read_jsonl(out / "train_metrics.jsonl") if "loss" in r]
    assert len(rows) == 3
    for r in rows:
        assert math.isfinite(r["loss"]) and math.isfinite(r["direction/log_odds_mean"]) and r["direction/log_odds_std"] >= 0
    # the balance term replaces the day-1 word's likelihood only with the coin's faces
    on = lambda **kw: WarmupTrainer.batch_balance.fget(SimpleNamespace(cfg=WarmupConfig(**kw)))  # noqa: E731
    assert on(coin_balance=balance) is (balance == "batch")
    assert on(direction_source="momentum", coin_balance="batch") is False


def test_resume_without_a_checkpoint_starts_with_empty_logs(tiny_model_dir, small_data, tmp_path):
    from stonklib.warmup import run_warmup

    out = tmp_path / "w"
    out.mkdir()
    (out / "train_metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')  # a run killed before its first checkpoint
    run_warmup(_cfg(tiny_model_dir, small_data, out, resume=True, max_steps=2, save_steps=2, eval_at_start=False),
               progress=False)
    steps = [r["step"] for r in read_jsonl(out / "train_metrics.jsonl")]
    assert steps == [1, 2, 2]  # two training steps and the last validation; the torn run's line is gone


def _warmup_cmd(model_dir, data, out):
    return [sys.executable, "-m", "stonklib.cli", "warmup", "--model", str(model_dir), "--data", str(data),
            "--output_dir", str(out), "--max_steps", "6", "--save_steps", "2", "--eval_steps", "100",
            "--batch_size", "2", "--max_train_samples", "16", "--max_eval_samples", "2", "--max_new_tokens", "6",
            "--no-tensorboard", "--no-gradient_checkpointing", "--prompt_version", "compact_format",
            "--max_prompt_tokens", "400", "--lr", "5e-3", "--lora_dropout", "0.1", "--device", "cpu"]


def test_sigkill_then_resume_matches_uninterrupted(tiny_model_dir, small_data, tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    ref, crash = tmp_path / "ref", tmp_path / "crash"
    subprocess.run(_warmup_cmd(tiny_model_dir, small_data, ref), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_warmup_cmd(tiny_model_dir, small_data, crash), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (crash / "checkpoint-4" / "trainer_state.json").exists():
        assert proc.poll() is None, "the warm-up ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(_warmup_cmd(tiny_model_dir, small_data, crash) + ["--resume"], check=True, env=env,
                   capture_output=True)
    got, want = read_jsonl(crash / "train_metrics.jsonl"), read_jsonl(ref / "train_metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in want]  # continuous, nothing duplicated
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("step_s", "val/reward")} for r in rows]  # noqa: E731
    for g, w in zip(strip(got), strip(want), strict=True):
        assert g.keys() == w.keys()
        for k in g:
            assert g[k] == w[k] if None in (g[k], w[k]) else g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), k
    from safetensors.torch import load_file

    a, b = load_file(crash / "final" / "adapter_model.safetensors"), load_file(ref / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] - b[k]).abs().max() < 1e-6) for k in a)
