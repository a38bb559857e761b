"""The training step: the static (CUDA-graph) way equals the eager way, padding keeps every image
once per epoch, SGD matches torch's, each recipe lever is on or off exactly as params say (the paper recipe
unchanged), a non-finite loss stops the cell, and the train stage prints the grid ETA."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffaug.config import Recipe, load_config
from diffaug.errors import UserError
from diffaug.formats.classifier import ImageClassifier, load_trained, save_trained
from diffaug.train import loop, stage
from diffaug.train.loop import NonFiniteTraining, Trainer, fit, steps_per_epoch
from diffaug.train.schedule import learning_rate
from tiny_training import CPU, HostReads, assert_same, fake_cuda_capture, tiny_net, tiny_network, toy  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread", "tiny_network")
EPS32 = float(np.finfo(np.float32).eps)


# 37 images in batches of 8: 4 full batches and a rest of 5, so padding (3 slots) and the partial batch both occur.
BASE = Recipe(epochs=2, batch_size=8, lr=0.05, warmup_epochs=1, label_smoothing=0.1, crop_padding=2)
LEVERS = dict(pad_last_batch=True, cutout=4, trivial_augment=True, ema_decay=0.9, tta_hflip=True)


def trainer(recipe=BASE, cuda_graph=False, seed=0, n=37, val=True):
    images, labels = toy(n)
    val_images, val_labels = toy(10, seed=1)
    return Trainer("resnet18", "cifar", 3, recipe, images, labels, seed=seed, device=CPU, precision="fp32",
                   cuda_graph=cuda_graph, val_images=val_images if val else None, val_labels=val_labels if val else None)


# ----------------------------------------------------------------------------- graph-style step == eager step
@pytest.mark.parametrize("levers", [{}, LEVERS], ids=["paper-like: partial last batch", "every lever on, padded"])
def test_static_step_gives_the_same_weights_as_the_eager_step(levers):
    """`cuda_graph=True` runs the code a CUDA graph captures (inputs and lr read through a device step
    counter); on a CPU it runs uncaptured. Tolerance 0: both ways run the same kernels on the same values in
    the same order on one CPU (one thread); only how a step finds its slice of the plan differs, so any
    difference is a bug, not float reassociation."""
    recipe = BASE.model_copy(update=levers)
    eager, static = trainer(recipe, cuda_graph=False), trainer(recipe, cuda_graph=True)
    h_eager, h_static = fit(eager).history, fit(static).history
    assert_same(eager.model.state_dict(), static.model.state_dict())
    assert_same(eager.final_model.state_dict(), static.final_model.state_dict())
    for a, b in zip(h_eager, h_static):
        assert {k: v for k, v in a.items() if k != "epoch_time_s"} == {k: v for k, v in b.items() if k != "epoch_time_s"}


def test_the_static_path_is_what_runs_for_full_batches(monkeypatch):
    calls = {"static": 0, "eager": 0}
    for name in ("_static_step", "_eager_step"):
        original = getattr(Trainer, name)

        def counted(self, *a, _original=original, _name=name):
            calls[_name.strip("_").split("_")[0]] += 1
            return _original(self, *a)

        monkeypatch.setattr(Trainer, name, counted)
    trainer(BASE, cuda_graph=True).train_epoch()
    assert calls == {"static": 4, "eager": 1}  # 4 full batches of 8; the rest of 5 runs eagerly (paper-like)
    calls.update(static=0, eager=0)
    trainer(BASE.model_copy(update=dict(pad_last_batch=True)), cuda_graph=True).train_epoch()
    assert calls == {"static": 5, "eager": 0}  # padded: one static shape for every step


def test_the_captured_step_reads_nothing_on_the_host_and_why_its_parts_are_these():
    """A host read (.item(), bool()) is a device sync, which a CUDA graph cannot capture: the static step has
    none with every lever on. The alternatives it does not use do read: torch's foreach SGD turns a tensor lr
    into a number, swa_utils.AveragedModel branches on its step count (why the EMA is hand-written)."""
    t = trainer(BASE.model_copy(update=LEVERS), cuda_graph=True)
    t.model.train()
    t._plan_epoch()
    with HostReads() as reads:
        t._static_step()
    assert reads.count == 0 and t.optimizer.defaults["fused"] is True
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.ones(3)
    with HostReads() as reads:
        torch.optim.SGD([param], lr=torch.tensor(0.1), momentum=0.9, foreach=True).step()
    assert reads.count > 0
    net = torch.nn.Linear(2, 2)
    ema = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    with HostReads() as reads:
        ema.update_parameters(net)
    assert reads.count > 0


# ----------------------------------------------------------------------------- every image once per epoch
@pytest.mark.parametrize("n, batch", [(37, 8), (40, 8), (5, 8), (17, 16)])
def test_padding_keeps_every_image_exactly_once_per_epoch(n, batch):
    t = trainer(BASE.model_copy(update=dict(batch_size=batch, pad_last_batch=True)), n=n)
    for _ in range(2):
        t._plan_epoch()
        plan = t._plan.numpy()
        assert plan.shape[0] == steps_per_epoch(n, batch, True) * batch == -(-n // batch) * batch  # static: steps x B
        weight = plan[:, loop.WEIGHT]
        real = plan[weight == 1, loop.LABEL_ROW]
        assert sorted(real) == list(range(n)), "each image exactly once with weight 1"
        assert np.all(weight[:n] == 1) and np.all(weight[n:] == 0), "padding only at the end, with weight 0"
        assert np.all((plan[n:, loop.LABEL_ROW] >= 0) & (plan[n:, loop.LABEL_ROW] < n)), "padding repeats real images"
    metrics = t.train_epoch()
    assert 0 <= metrics["train/acc"] <= 1  # accuracy over the n real images: padding is not counted


def test_padded_samples_do_not_enter_the_loss():
    """Changing the label of a zero-weight sample changes nothing; changing a real one's does."""
    t = trainer(BASE.model_copy(update=dict(pad_last_batch=True, crop_padding=0, hflip=False)), n=37)
    t.model.train()
    t._plan_epoch()
    last = t._plan[32:40].clone()  # slots 37..39 are padding

    def loss_with(plan):
        saved = [p.detach().clone() for p in t.params]
        t._loss_sum.zero_()
        t._step(plan, torch.tensor(0.0))  # lr 0: weights stay; the loss is accumulated
        for p, s in zip(t.params, saved):
            assert torch.equal(p, s)
        return t._loss_sum.item()

    base = loss_with(last)
    labels = t.labels.clone()
    pad_row = int(last[5, loop.LABEL_ROW])
    real_rows = set(int(r) for r in last[:5, loop.LABEL_ROW])
    if pad_row not in real_rows:  # a padded slot repeats an image that is not also a real sample of this batch
        t.labels[pad_row] = (labels[pad_row] + 1) % 3
        # BatchNorm normalises with the batch's statistics, which the padded pixels enter; labels do not.
        assert loss_with(last) == base
    t.labels.copy_(labels)
    t.labels[int(last[0, loop.LABEL_ROW])] = (labels[int(last[0, loop.LABEL_ROW])] + 1) % 3
    assert loss_with(last) != base
    t.labels.copy_(labels)


def test_unpadded_epoch_keeps_the_old_rule():
    assert steps_per_epoch(37, 8) == 5 and steps_per_epoch(33, 8) == 4  # a rest of one image is dropped
    assert steps_per_epoch(33, 8, True) == 5  # padded: it is kept (8 samples, 7 of weight 0)
    t = trainer(BASE, n=37)
    t._plan_epoch()
    assert sorted(t._plan[:, loop.LABEL_ROW].tolist()) == list(range(37)) and torch.all(t._plan[:, loop.WEIGHT] == 1)


# ----------------------------------------------------------------------------- levers, exactly as params say
PAPER = dict(epochs=250, batch_size=128, lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.0005,
             schedule="paper_cyclic", warmup_epochs=0, label_smoothing=0.0, crop_padding=4, hflip=True,
             pad_last_batch=False, cutout=0, trivial_augment=False, ema_decay=0.0, tta_hflip=False)


def test_paper_recipe_is_exactly_the_papers_with_every_new_lever_off():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.train.recipes["paper"].model_dump() == PAPER
    fields = set(Recipe.model_fields)
    assert fields == set(PAPER), "a new Recipe field must be pinned here for the paper recipe"
    defaults = Recipe()  # a recipe that names no lever gets the paper's behaviour
    assert (defaults.pad_last_batch, defaults.cutout, defaults.trivial_augment, defaults.ema_decay, defaults.tta_hflip) == \
        (False, 0, False, 0.0, False)


def lever_calls(monkeypatch, recipe) -> tuple[dict, Trainer]:
    calls = {"cutout": 0, "trivial_augment": 0}
    real_cutout, real_ta = loop.apply_cutout, loop.trivial_augment
    monkeypatch.setattr(loop, "apply_cutout", lambda *a: calls.__setitem__("cutout", calls["cutout"] + 1) or real_cutout(*a))
    monkeypatch.setattr(loop, "trivial_augment", lambda *a: calls.__setitem__("trivial_augment", calls["trivial_augment"] + 1) or real_ta(*a))
    t = trainer(recipe)
    t.run_epoch()
    return calls, t


@pytest.mark.parametrize("name", ["paper", "default"])
def test_each_lever_is_on_or_off_as_the_recipe_in_params_says(monkeypatch, name):
    recipe = load_config(REPO / "params.yaml").train.recipes[name]
    small = recipe.model_copy(update=dict(epochs=2, batch_size=8, warmup_epochs=0, lr=0.05, crop_padding=2,
                                          cutout=min(recipe.cutout, 4)))
    calls, t = lever_calls(monkeypatch, small)
    assert (calls["cutout"] > 0) == (recipe.cutout > 0)
    assert (calls["trivial_augment"] > 0) == recipe.trivial_augment
    assert (t.ema is not None) == (recipe.ema_decay > 0) and (t.final_model is t.ema if t.ema is not None else t.model)
    assert t.final_model.tta_hflip == recipe.tta_hflip
    assert t.steps_per_epoch == steps_per_epoch(37, 8, recipe.pad_last_batch)


def test_every_lever_switches_alone(monkeypatch):
    for lever, value in LEVERS.items():
        recipe = BASE.model_copy(update=dict(epochs=1, warmup_epochs=0, **{lever: value}))
        calls, t = lever_calls(monkeypatch, recipe)
        assert (calls["cutout"] > 0) == (lever == "cutout")
        assert (calls["trivial_augment"] > 0) == (lever == "trivial_augment")
        assert (t.ema is not None) == (lever == "ema_decay")
        assert t.final_model.tta_hflip == (lever == "tta_hflip")
        assert t.slots == (40 if lever == "pad_last_batch" else 37)


def test_ema_is_the_exponential_average_of_the_weights():
    decay = 0.9
    t = trainer(BASE.model_copy(update=dict(ema_decay=decay, epochs=1, warmup_epochs=0)))
    expected = {k: v.clone() for k, v in t.model.net.state_dict().items()}
    weights = []
    original = Trainer._step

    def record(self, plan, lr):
        original(self, plan, lr)
        weights.append({k: v.clone() for k, v in self.model.net.state_dict().items()})

    Trainer._step = record
    try:
        t.train_epoch()
    finally:
        Trainer._step = original
    for step, w in enumerate(weights):
        d = min(decay, (1 + step) / (10 + step))  # warm-up: early steps average over fewer past weights
        for k, v in w.items():
            expected[k] = expected[k] * d + v * (1 - d) if v.is_floating_point() else v
    assert len(weights) == 5 and t._ema_steps.item() == 5
    for k, v in t.ema.net.state_dict().items():
        # d is a float32 device tensor on the trainer's side and a Python float64 here:
        # each update may round by one float32 ulp of |v|, over 5 updates.
        torch.testing.assert_close(v, expected[k], rtol=5 * 2 * EPS32, atol=5 * 2 * EPS32 * v.abs().max().item())


def test_tta_averages_an_image_and_its_mirror_at_evaluation_only_and_survives_saving(tmp_path):
    torch.manual_seed(0)
    net = tiny_net("resnet18", "cifar", 3)
    model = ImageClassifier(net, torch.full((3,), 120.0), torch.full((3,), 60.0), tta_hflip=True).eval()
    x = torch.from_numpy(toy(4)[0]).permute(0, 3, 1, 2).contiguous()  # the layout the model uses: same kernels
    with torch.no_grad():
        plain = net((x.float() - 120) / 60)
        mirrored = net((x.flip(3).float() - 120) / 60)
        assert torch.equal(model(x), (plain + mirrored) / 2)  # the same ops on the same values: exact
        model.train()
        assert torch.equal(model(x), net((x.float() - 120) / 60))
    meta = {"model": "resnet18", "variant": "cifar", "num_classes": 3, "classes": ["a", "b", "c"], "epochs": 1,
            "settings": {"channels_last": False, "recipe": {"tta_hflip": True}}}
    save_trained(tmp_path / "m.pt", model, meta)
    assert load_trained(tmp_path / "m.pt")[0].tta_hflip is True
    meta["settings"]["recipe"]["tta_hflip"] = False
    save_trained(tmp_path / "p.pt", model, meta)
    assert load_trained(tmp_path / "p.pt")[0].tta_hflip is False


def test_resume_with_every_lever_on_is_exact(tmp_path):
    recipe = BASE.model_copy(update=dict(epochs=3, **LEVERS))
    uninterrupted = trainer(recipe, cuda_graph=True)
    full = fit(uninterrupted).history

    class Killed(Exception):
        pass

    def kill_in_epoch_2(metrics):
        if metrics["epoch"] == 1:
            raise Killed  # after epoch 2 ran, before its checkpoint: only epoch 1's checkpoint exists

    with pytest.raises(Killed):
        fit(trainer(recipe, cuda_graph=True), checkpoint=tmp_path / "c.pt", checkpoint_every=1, settings_hash="h",
            log=kill_in_epoch_2)
    resumed = trainer(recipe, cuda_graph=True)
    result = fit(resumed, checkpoint=tmp_path / "c.pt", checkpoint_every=1, settings_hash="h")
    assert result.resumed_from == 1
    assert_same(uninterrupted.model.state_dict(), resumed.model.state_dict())
    assert_same(uninterrupted.ema.state_dict(), resumed.ema.state_dict())
    assert [h["train/loss"] for h in full] == [h["train/loss"] for h in result.history]


# ----------------------------------------------------------------------------- non-finite loss
HUGE_LR = 1e6  # diverges in the first epoch on these toy images


def test_a_huge_lr_stops_with_the_epoch_and_keeps_the_last_good_checkpoint(tmp_path):
    # lr 100 warmed up over 5 epochs: the first epoch stays finite on these toy images, a later one does not
    # (deterministic: one CPU thread, seeded), so a good checkpoint exists when training stops.
    recipe = BASE.model_copy(update=dict(epochs=6, lr=100.0, warmup_epochs=5, schedule="constant"))
    checkpoint = tmp_path / "c.pt"
    logged = []
    with pytest.raises(NonFiniteTraining) as info:
        fit(trainer(recipe), checkpoint=checkpoint, checkpoint_every=1, settings_hash="h", log=logged.append,
            label="resnet18/orig100 seed 0")
    message, diverged = str(info.value), info.value.epoch
    assert isinstance(info.value, UserError) and "\n" not in message and diverged >= 1
    assert message.startswith(f"resnet18/orig100 seed 0: training diverged in epoch {diverged + 1}/6: the loss or the "
                              "weights are not finite")
    assert [m["epoch"] for m in logged] == list(range(diverged))  # the diverged epoch is neither logged nor checkpointed
    state = torch.load(checkpoint, weights_only=True)
    assert state["trainer"]["epoch"] == diverged
    # weights and BatchNorm statistics: all finite (a BatchNorm running_var may overflow first)
    assert all(torch.isfinite(v).all() for v in state["trainer"]["model"].values() if v.is_floating_point())


@pytest.fixture
def stage_dir(tmp_path, monkeypatch):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(device="cpu", seeds=[0], precision="fp32")
    params["train"]["recipes"]["default"].update(epochs=2, batch_size=8, warmup_epochs=0, lr=0.05, cutout=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    images, labels = toy(20)
    classes = np.array(["a", "b", "c"])
    (tmp_path / "prepared").mkdir()
    (tmp_path / "mixtures").mkdir()
    np.savez(tmp_path / "prepared" / "val.npz", images=images[:6], labels=labels[:6], classes=classes)
    np.savez(tmp_path / "mixtures" / "orig100.npz", images=images, labels=labels, classes=classes)
    (tmp_path / "mixtures" / "orig50.json").write_text(json.dumps({"total": 25_000}))
    monkeypatch.setattr(stage, "load_mixture", lambda m, p, s: (lambda d: (d["images"], d["labels"].astype(np.int64),
                                                                           [str(c) for c in d["classes"]]))(np.load(m)))
    args = ["--params", str(tmp_path / "params.yaml"), "--model", "resnet18", "--mix", "orig100",
            "--mixture", str(tmp_path / "mixtures" / "orig100.npz"), "--prepared", str(tmp_path / "prepared"),
            "--synthetic", str(tmp_path / "s"), "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "metrics"),
            "--checkpoints", str(tmp_path / "ckpt")]
    return tmp_path, params, args


def test_stage_on_a_non_finite_loss_exits_2_with_one_line_and_writes_no_weights(stage_dir, capsys):
    tmp, params, args = stage_dir
    params["train"]["recipes"]["default"].update(lr=HUGE_LR, epochs=4)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as info:
        stage.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: resnet18/orig100 seed 0: training diverged in epoch ")
    assert not (tmp / "out" / "seed-0.pt").exists() and not (tmp / "out" / "train.json").exists()


def test_stage_prints_the_grid_eta_before_training_and_records_every_lever(stage_dir, capsys):
    tmp, params, args = stage_dir
    stage.main(args)
    out = capsys.readouterr().out.splitlines()
    eta = [i for i, line in enumerate(out) if line.startswith("grid ETA: resnet18 x 2 mixtures")]
    first_epoch = [i for i, line in enumerate(out) if line.startswith("seed 0 epoch 1/")]
    assert eta and first_epoch and eta[0] < first_epoch[0], out
    assert "not built yet" in out[eta[0]]  # only orig100 (loaded) and orig50 (its json) are known here
    report = json.loads((tmp / "out" / "train.json").read_text())
    recipe = report["settings"]["recipe"]
    for lever in ("pad_last_batch", "cutout", "trivial_augment", "ema_decay", "tta_hflip", "batch_size", "lr", "schedule"):
        assert recipe[lever] == getattr(Recipe(**params["train"]["recipes"]["default"]), lever)  # as written, else the default
    assert report["settings"]["cuda_graph"] is True
    assert report["seeds"]["0"]["step"] == "static (uncaptured: no CUDA)"  # CUDA: cuda_graph or eager (fallback: ...)
    model, meta = load_trained(tmp / "out" / "seed-0.pt")
    assert model.tta_hflip == params["train"]["recipes"]["default"]["tta_hflip"]


def test_paper_schedule_is_torchs_cosine_annealing_stepped_per_batch():
    """The paper's code: torch.optim.SGD with CosineAnnealingLR(T_max=200) stepped every batch. lr(step) is its
    closed form; torch computes it recursively, so the two agree to float rounding over several cycles."""
    paper = Recipe(**PAPER)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=paper.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=200, eta_min=0.0)
    theirs = []
    for _ in range(1000):
        theirs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: only the scheduler's clock moves
        scheduler.step()
    lr = learning_rate(paper, steps_per_epoch=391)
    np.testing.assert_allclose([lr(s) for s in range(1000)], theirs, rtol=0, atol=1e-12 * paper.lr)


def test_paper_recipe_step_is_the_plain_torch_step():
    """The paper's step as its code wrote it (mean cross-entropy, loss.backward(), torch.optim.SGD) against
    ours on the same batch: forward/backward are the same kernels (BatchNorm statistics identical) and the
    weights after the update agree to float32 rounding (ours is torch's fused SGD with a float32 tensor lr)."""
    import copy

    import torch.nn.functional as F

    from diffaug.train.augment import apply_crop_flip

    paper = Recipe(**PAPER).model_copy(update=dict(epochs=2, batch_size=8, crop_padding=2))
    t = trainer(paper)
    reference = copy.deepcopy(t.model).train()
    t.model.train()
    t._plan_epoch()
    assert t._lrs.tolist() == pytest.approx([learning_rate(paper, t.steps_per_epoch)(s) for s in range(t.steps_per_epoch)],
                                            rel=EPS32, abs=0)  # float64 lrs stored as float32
    optimizer = torch.optim.SGD(reference.parameters(), lr=float(t._lrs[0]), momentum=paper.momentum,
                                nesterov=paper.nesterov, weight_decay=paper.weight_decay)
    plan = t._plan[:8]
    x = apply_crop_flip(t.images[plan[:, loop.IMAGE_ROW]], 2, True, plan[:, loop.CROP])
    loss = F.cross_entropy(reference(x.permute(0, 3, 1, 2)), t.labels[plan[:, loop.LABEL_ROW]])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    t._eager_step(0)
    ours, theirs = t.model.state_dict(), reference.state_dict()
    for key in ours:
        if "running" in key or "num_batches" in key:
            assert torch.equal(ours[key], theirs[key]), key
        else:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=4 * EPS32 * theirs[key].abs().max().item())
    assert t._loss_sum.item() == pytest.approx(loss.item() * 8, rel=EPS32)


def test_graph_capture_leaves_no_trace_of_its_warm_up(monkeypatch):
    """`_prove_graph` runs warm-up steps, the captured step and the proof; on a GPU the capture only records,
    here (torch.cuda faked on a CPU) all of them run for real. Either way it must put back every tensor the
    steps change (weights, BatchNorm statistics, momentum, EMA and its step count), so training with the
    replayed graph gives the eager weights exactly (tolerance 0, as in the static-step test above)."""
    recipe = BASE.model_copy(update={k: v for k, v in LEVERS.items() if k != "trivial_augment"})
    graphed = trainer(recipe, cuda_graph=True)

    class FakeGraph:
        def replay(self):
            graphed._static_step()

    fake_cuda_capture(monkeypatch, FakeGraph)
    before = {k: v.clone() for k, v in graphed.model.state_dict().items()}
    graphed._prove_graph()  # on a plan of zeros: image 0 and lr 0 in every slot, as before the first epoch
    assert graphed.step_mode == "cuda_graph"
    assert_same(before, graphed.model.state_dict())
    assert graphed._ema_steps.item() == 0 and all(torch.count_nonzero(b) == 0 for b in graphed.momentum_buffers)
    eager = trainer(recipe, cuda_graph=False)
    fit(graphed), fit(eager)
    assert_same(eager.model.state_dict(), graphed.model.state_dict())
    assert_same(eager.ema.state_dict(), graphed.ema.state_dict())
