"""CoMMIT balance: kappa maths, estimators, scheduler rules, baselines, regulariser, resume."""

import json
import math
import signal

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cotune.balance.estimator import exact_estimate, jvp_estimate, snapshot
from cotune.balance.estimator import Estimate
from cotune.balance.regularizer import lag_weights
from cotune.balance.scheduler import BalanceScheduler, kappa_of
from cotune.balance.strategies import STRATEGIES, make_balance
from cotune.config import BalanceConfig, load_config
from cotune.testing import corpus
from cotune.train import Interrupted, Trainer


def run(tiny_root, tmp_path, name, overrides=(), **train):
    raw = corpus.run_config(tiny_root, tmp_path / "data", **train)
    trainer = Trainer(load_config(data=raw, overrides=overrides), tmp_path / name)
    trainer.run()
    return trainer, [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


class Toy(nn.Module):
    """logits = E[ids] @ (A + B): two sides of identical shape acting on the same outputs."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = nn.Parameter(torch.randn(10, 6, generator=g), requires_grad=False)
        self.a = nn.Parameter(torch.randn(6, 10, generator=g) * 0.3)
        self.b = nn.Parameter(self.a.detach().clone())
        self.placeholder_ids = {}

    def forward(self, input_ids, attention_mask=None, labels=None, media=None, features=None, sample_ids=None,
                use_cache=False, supervised_logits=False):
        # CotuneModel's contract: logits at every position when logit_positions is None.
        return type("Out", (), {"logits": self.embed[input_ids] @ (self.a + self.b), "logit_positions": None})()


def toy_batch():
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids, "media": {}}


@pytest.mark.parametrize("estimator", [exact_estimate, jvp_estimate])
def test_symmetric_toy_gives_symmetric_kappa_and_restores_parameters(estimator):
    model = Toy()
    params = {"S": [model.a], "T": [model.b]}
    before = snapshot(params)
    delta = torch.randn(6, 10, generator=torch.Generator().manual_seed(1)) * 0.01
    with torch.no_grad():
        model.a.add_(delta)
        model.b.add_(delta)
    after = snapshot(params)
    estimate = estimator(model, toy_batch(), params, before, after, "all", "forward")
    assert torch.equal(model.a, after["S"][0]) and torch.equal(model.b, after["T"][0])
    kl = {s: v / estimate.positions for s, v in estimate.kl.items()}
    joint = estimate.kl_joint / estimate.positions
    assert kl["S"] == pytest.approx(kl["T"], rel=1e-4)
    config = BalanceConfig()
    encoder, _ = kappa_of(config, ["S", "T"], kl, joint)
    llm, _ = kappa_of(BalanceConfig(kappa="llm_share"), ["S", "T"], kl, joint)
    normalised, _ = kappa_of(BalanceConfig(kappa="normalised_share"), ["S", "T"], kl, joint)
    assert 0 < encoder < 1 and encoder == pytest.approx(llm, rel=1e-4) and normalised == pytest.approx(0.5, rel=1e-4)
    assert encoder == pytest.approx(0.25, rel=0.05)  # identical logit changes: KL_J ~ 4 KL_S


def test_jvp_error_against_exact_shrinks_with_the_step():
    errors = []
    for scale in (0.04, 0.02, 0.01):
        model = Toy()
        params = {"S": [model.a], "T": [model.b]}
        before = snapshot(params)
        with torch.no_grad():
            model.a.add_(torch.randn(6, 10, generator=torch.Generator().manual_seed(2)) * scale)
            model.b.add_(torch.randn(6, 10, generator=torch.Generator().manual_seed(3)) * scale * 2)
        after = snapshot(params)
        exact = exact_estimate(model, toy_batch(), params, before, after, "all", "forward")
        approx = jvp_estimate(model, toy_batch(), params, before, after, "all", "forward")
        share = lambda e: kappa_of(BalanceConfig(), ["S", "T"], {k: v / e.positions for k, v in e.kl.items()}, e.kl_joint / e.positions)[0]
        errors.append(abs(share(approx) - share(exact)) / share(exact))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05
    assert errors[1] / errors[0] < 0.7  # first-order: the error roughly halves with the step


def test_kappa_definitions_and_invalid_estimates():
    kl = {"S": 0.3, "T": 0.1}
    assert kappa_of(BalanceConfig(), ["S", "T"], kl, 0.5)[0] == pytest.approx(0.6)
    assert kappa_of(BalanceConfig(kappa="llm_share"), ["S", "T"], kl, 0.5)[1]["S"] == pytest.approx(0.8)
    ratio, shares = kappa_of(BalanceConfig(kappa="direct_ratio"), ["S", "T"], kl, 0.5)
    assert ratio == pytest.approx(3.0) and shares["S"] == pytest.approx(0.75)
    assert math.isnan(kappa_of(BalanceConfig(), ["S", "T"], {"S": 0.0, "T": 0.0}, 0.0)[0])
    _, three = kappa_of(BalanceConfig(), ["S1", "S2", "T"], {"S1": 1.0, "S2": 1.0, "T": 2.0}, 5.0)
    assert three == {"S1": 0.25, "S2": 0.25, "T": 0.5}


def estimate_with(share):
    return Estimate(kl={"S": share, "T": 1 - share}, kl_joint=1.0, positions=1)


def test_reference_rule_windows_and_clipping():
    scheduler = BalanceScheduler(BalanceConfig(window=3, rule="reference"), ["S", "T"], start_step=2)
    assert scheduler.end_of_step(1) == {}  # before start_step: only logged
    for step, share in zip(range(3, 6), (0.9, 1.0, 0.95)):
        scheduler.observe(step, estimate_with(share))
        if step < 5:
            assert scheduler.end_of_step(step) == {} and scheduler.multipliers == {"S": 1.0, "T": 1.0}
    window = scheduler.end_of_step(5)
    assert window["balance/kappa_bar"] == pytest.approx(0.95)
    assert scheduler.multipliers["S"] == pytest.approx(0.1) and scheduler.multipliers["T"] == pytest.approx(1.9)
    balanced = BalanceScheduler(BalanceConfig(window=1), ["S", "T"], start_step=0)
    balanced.observe(1, estimate_with(0.5))
    balanced.end_of_step(1)
    assert balanced.multipliers == {"S": pytest.approx(1.0), "T": pytest.approx(1.0)}
    saturated = BalanceScheduler(BalanceConfig(window=1), ["S", "T"], start_step=0)
    saturated.observe(1, estimate_with(0.0))
    saturated.end_of_step(1)
    assert saturated.multipliers == {"S": 2.0, "T": 0.1}
    empty = BalanceScheduler(BalanceConfig(window=1), ["S", "T"], start_step=0)
    empty.observe(1, Estimate(kl={"S": 0.0, "T": 0.0}, kl_joint=0.0, positions=1))
    empty.end_of_step(1)
    assert empty.multipliers == {"S": 1.0, "T": 1.0}  # no valid estimate: unchanged


def test_kl_equalise_rule_moves_the_kls_together():
    scheduler = BalanceScheduler(BalanceConfig(window=1, rule="kl_equalise", gamma=1.0), ["S", "T"], start_step=0)
    scheduler.observe(1, Estimate(kl={"S": 0.4, "T": 0.1}, kl_joint=0.5, positions=1))
    scheduler.end_of_step(1)
    m = scheduler.multipliers
    assert m["S"] < 1 < m["T"] and m["S"] * m["T"] == pytest.approx(1.0)
    # KL ~ quadratic in the step size: with gamma 1 the scaled KLs become equal.
    assert 0.4 * m["S"] ** 2 == pytest.approx(0.1 * m["T"] ** 2)


def test_lag_weights():
    assert lag_weights({"S": 0.2, "T": 0.8}) == {"S": pytest.approx(0.6), "T": 0.0}
    assert lag_weights({"S": 0.5, "T": 0.5}) == {"S": 0.0, "T": 0.0}


def test_estimation_leaves_training_unchanged(tiny_root, tmp_path):
    with_kappa, a = run(tiny_root, tmp_path, "on", ["balance.every_k=1"], max_steps=5)
    without, b = run(tiny_root, tmp_path, "off", ["balance.estimator=none"], max_steps=5)
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    for name, value in with_kappa.model.trainable_state_dict().items():
        assert torch.equal(value, without.model.trainable_state_dict()[name])
    assert any(r.get("balance/valid") == 1.0 for r in a) and not any("balance/kappa" in r for r in b)


def test_faster_encoder_side_raises_kappa(tiny_root, tmp_path):
    """The paper's sanity check: a 10x encoder-side learning rate moves kappa toward 1."""
    faster = [f"train.groups.{g}.lr=0.1" for g in ("encoder.image", "connector.image", "modality_embedding")]
    common = dict(max_steps=12, lr=0.01, warmup_steps=0, schedule="constant")
    _, base = run(tiny_root, tmp_path, "base", ["balance.every_k=1"], **common)
    _, fast = run(tiny_root, tmp_path, "fast", ["balance.every_k=1", *faster], **common)
    mean = lambda rs: sum(r["balance/kappa"] for r in rs if r.get("balance/valid") == 1.0) / sum(r.get("balance/valid") == 1.0 for r in rs)
    assert mean(fast) > mean(base) + 0.1


@pytest.mark.parametrize("method, first", [("feature_cd", "S"), ("language_cd", "T")])
def test_cd_baselines_move_one_side_per_step(tiny_root, tmp_path, method, first):
    trainer, records = run(tiny_root, tmp_path, method, [f"balance.method={method}"], max_steps=4, checkpoint_every=1,
                           keep_checkpoints=10, warmup_steps=0)
    sides = trainer.balance.sides
    groups_of = {side: set(groups) for side, groups in sides.items()}
    checkpoints = sorted((tmp_path / method / "checkpoints").glob("step-*"))
    states = [load_file(c / "trainable.safetensors") for c in checkpoints]
    component = {name: group for group, module in trainer.model.components().items() for name, _ in
                 ((f"{'connectors.' + group.split('.')[1] if group.startswith('connector.') else ('encoders.' + group.split('.')[1] if group.startswith('encoder.') else group)}.{n}", p) for n, p in module.named_parameters())}
    order = [first, "T" if first == "S" else "S"]
    for step, (old, new) in enumerate(zip(states, states[1:]), start=1):
        moved = {component[k] for k in new if not torch.equal(new[k], old[k])}
        assert moved and moved <= groups_of[order[step % 2]], (step, moved)


@pytest.mark.parametrize("target", ["self_predict", "grad_norm"])
def test_regulariser_gradient_reaches_only_lagging_sides(tiny_root, tmp_path, target):
    raw = corpus.run_config(tiny_root, tmp_path / "data", max_steps=1)
    trainer = Trainer(load_config(data=raw, overrides=["balance.method=commit", f"balance.aux_target={target}"]), tmp_path / "run")
    trainer.setup()
    strategy = trainer.balance
    strategy.lag = {"S": 1.0, "T": 0.0}
    batch = next(iter(trainer.data.loader))
    with strategy.forward_context():
        out = trainer.model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"], media=batch["media"])
    strategy.after_forward(0, batch, out, out.loss, 1.0, last=True)
    reached = set(strategy.regulariser.pending)
    s_ids = {id(p) for p in strategy.params["S"] if p.requires_grad}
    assert reached == s_ids and not reached & {id(p) for p in strategy.params["T"]}
    assert any(torch.count_nonzero(g) for g in strategy.regulariser.pending.values())


def test_grad_norm_regulariser_is_minus_the_lagging_sides_gradient_norm_slope():
    """aux_target grad_norm: the gradient added to the lagging side S is -lambda l_S d||grad_S L||/dS,
    checked against central finite differences of the gradient norm along a random direction."""
    model = Toy().double()
    optimizer = torch.optim.SGD([{"params": [model.a], "group": "encoder.image"}, {"params": [model.b], "group": "llm"}], lr=0.1)
    config = BalanceConfig(method="commit", aux_target="grad_norm", aux_weight=0.5)
    strategy = make_balance(config, model, optimizer, start_step=0, reduce=float)
    strategy.lag = {"S": 0.8, "T": 0.0}
    regulariser = strategy.regulariser
    batch = toy_batch()

    def loss_at(a):
        logits = model.embed[batch["input_ids"]] @ (a + model.b)
        return nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())

    value = regulariser.add(None, batch["labels"], 1.0, main_loss=loss_at(model.a))
    added = regulariser.pending[id(model.a)]
    assert set(regulariser.pending) == {id(model.a)}

    def grad_norm(a):
        a = a.detach().requires_grad_(True)
        return float(torch.autograd.grad(loss_at(a), a)[0].norm())

    direction = torch.randn(6, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eps = 1e-5
    slope = (grad_norm(model.a + eps * direction) - grad_norm(model.a - eps * direction)) / (2 * eps)
    assert float((added.double() * direction).sum()) == pytest.approx(-0.5 * 0.8 * slope, rel=1e-5)
    assert value == pytest.approx(-0.5 * 0.8 * grad_norm(model.a))
    assert abs(slope) > 1e-3  # a direction along which the norm really changes


def test_grad_norm_regulariser_trains_and_changes_the_update(tiny_root, tmp_path):
    """A commit run with the grad_norm variant: after the first window the lagging side gets the
    double-backward gradient (logged as a negative aux loss) and the trained weights differ from the
    same run without the regulariser."""
    common = ["balance.method=commit", "balance.every_k=1", "balance.window=2", "balance.start_step=0", "balance.aux_target=grad_norm"]
    with_aux, records = run(tiny_root, tmp_path, "gn", [*common, "balance.aux_weight=1.0"], max_steps=5, warmup_steps=0)
    without, _ = run(tiny_root, tmp_path, "none", [*common, "balance.aux_weight=0"], max_steps=5, warmup_steps=0)
    assert any(r.get("balance/aux_loss", 0) < 0 for r in records)
    a, b = with_aux.model.trainable_state_dict(), without.model.trainable_state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_resume_keeps_the_scheduler_state(tiny_root, tmp_path):
    overrides = ["balance.method=commit_clr", "balance.every_k=1", "balance.window=2", "balance.start_step=0"]
    common = dict(max_steps=8, warmup_steps=0, schedule="constant", checkpoint_every=100)
    _, reference = run(tiny_root, tmp_path, "ref", overrides, **common)

    raw = corpus.run_config(tiny_root, tmp_path / "data", **common)
    config = load_config(data=raw, overrides=overrides)
    first = Trainer(config, tmp_path / "run")
    first.setup()

    def stop(_module, _inputs, output):
        if first.state.step == 3:
            first._stop_signal = signal.SIGTERM
        return output

    first.model.llm.lm_head.register_forward_hook(stop)
    with pytest.raises(Interrupted):
        first.run()
    Trainer(config, tmp_path / "run", resume=True).run()
    resumed = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = [k for k in reference[-1] if k.startswith(("balance/multiplier", "lr/"))]
    assert any(reference[-1][k] != 1.0 for k in keys if k.startswith("balance/multiplier"))
    for a, b in zip(reference, resumed, strict=True):
        assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys} and a["loss"] == b["loss"]


def test_reusing_the_training_forward_for_before_gives_the_same_kappa(tiny_root, tmp_path):
    """With no dropout and fp32, the training forward's logits are the "before" distribution."""
    trainer, reused = run(tiny_root, tmp_path, "reused", ["balance.every_k=1"], max_steps=4)
    trainer.model.train()
    assert trainer.balance.monitor.reuses_training_logits(0, "fp32") and not trainer.balance.monitor.reuses_training_logits(0, "bf16")
    _, separate = run(tiny_root, tmp_path, "separate", ["balance.every_k=1", "balance.reuse_training_logits=never"], max_steps=4)
    for a, b in zip(reused, separate, strict=True):
        if a.get("balance/valid") == 1.0:
            assert a["balance/kappa"] == pytest.approx(b["balance/kappa"], rel=1e-4, abs=1e-7)
            assert a["balance/estimate_seconds"] > 0
    assert any(r.get("balance/valid") == 1.0 for r in reused)


def test_every_configurable_method_has_a_strategy():
    from cotune.config.balance import METHODS

    assert STRATEGIES.names() == sorted(METHODS)
