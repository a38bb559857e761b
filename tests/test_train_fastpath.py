"""The training fast path proves itself: the CUDA-graph step is captured and its first replays compared with
the uncaptured step from the same state; a capture that raises or a replay that disagrees means eager
training, one line naming the reason and `step_mode` recording it, with the eager run's exact weights.
The capture warm-up leaves the CUDA RNG (dropout) where it was. Float16 runs torch's GradScaler, which skips
overflowing steps.

torch.cuda is faked on this CPU as in test_train_step.py: a "graph" replays by running the static step
for real, and the "CUDA RNG" is torch's CPU generator, which dropout draws from on a CPU."""
import contextlib
import types

import pytest
import torch

from diffaug.config import Recipe
from diffaug.train import loop
from diffaug.train.loop import Trainer, fit
from tiny_training import CPU, assert_same, fake_cuda_capture, tiny_network, toy  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread", "tiny_network")
# 37 images in batches of 8: 4 full (graph) batches and an eager rest of 5.
BASE = Recipe(epochs=2, batch_size=8, lr=0.05, warmup_epochs=1, label_smoothing=0.1, crop_padding=2)


def make(cuda_graph, model="resnet18", variant="cifar", recipe=BASE, size=8, n=37):
    images, labels = toy(n, size=size)
    return Trainer(model, variant, 3, recipe, images, labels, seed=0, device=CPU, precision="fp32", cuda_graph=cuda_graph)


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's graph API on a CPU. `replay` is what the fake graph does on replay (default: the static
    step, as a correct capture would); `capture_error` makes `torch.cuda.graph` raise."""
    state = types.SimpleNamespace(replay=None, capture_error=None, trainer=None, replays=0, rng_reads=0)

    class FakeGraph:
        def replay(self):
            state.replays += 1
            (state.replay or (lambda t: t._static_step()))(state.trainer)

    @contextlib.contextmanager
    def graph(g):
        if state.capture_error is not None:
            raise state.capture_error
        yield

    def get_rng_state(device=None):
        state.rng_reads += 1
        return torch.get_rng_state()

    fake_cuda_capture(monkeypatch, FakeGraph, graph, get_rng_state)
    return state


def graphed(fake_cuda, **kw) -> Trainer:
    t = make(True, **kw)
    t.capture_graphs = True  # what a CUDA device sets
    fake_cuda.trainer = t
    return t


def eager_weights(**kw) -> dict:
    t = make(False, **kw)
    fit(t)
    return t.model.state_dict()


def test_a_replay_that_matches_is_used_and_recorded(fake_cuda, capsys):
    t = graphed(fake_cuda)
    fit(t)
    assert t.step_mode == "cuda_graph" and t._graph is not None
    assert fake_cuda.replays == 2 * 4 + loop.PROOF_STEPS  # the proof, then 4 full batches in each of 2 epochs
    assert capsys.readouterr().err == ""
    assert_same(eager_weights(), t.model.state_dict())  # the proof left no trace: tolerance 0 on the same CPU


def test_a_capture_that_raises_falls_back_to_eager_with_one_line(fake_cuda, capsys):
    fake_cuda.capture_error = RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")
    t = graphed(fake_cuda)
    fit(t)
    assert t.step_mode == ("eager (fallback: capture failed: RuntimeError: CUDA error: operation not permitted "
                           "when stream is capturing)")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("note: train.cuda_graph: capture failed: RuntimeError") \
        and "training continues eager" in err[0] and "train.cuda_graph: false" in err[0], err
    assert fake_cuda.replays == 0 and t._graph is None
    # the warm-up steps ran before capture raised: every tensor they changed was put back
    assert_same(eager_weights(), t.model.state_dict())


@pytest.mark.parametrize("wrong", ["doubled update", "stale batch", "wrong lr"])
def test_a_replay_that_disagrees_falls_back_and_training_is_exactly_eager(fake_cuda, capsys, wrong):
    def doubled(t):
        t._static_step()
        t._counter.sub_(1)
        t._static_step()

    def stale(t):  # always the epoch's first batch (a graph pointing at a copy of the inputs)
        t._step(t._plan[:t.recipe.batch_size], t._lrs[0])
        t._counter.add_(1)

    def wrong_lr(t):
        plan = t._plan.index_select(0, t._counter * t.recipe.batch_size + t._slot_offsets)
        t._step(plan, t._lrs.index_select(0, t._counter).reshape(()) * 1.5)
        t._counter.add_(1)

    fake_cuda.replay = {"doubled update": doubled, "stale batch": stale, "wrong lr": wrong_lr}[wrong]
    t = graphed(fake_cuda)
    fit(t)
    # a doubled update also counts BatchNorm's batches twice: the integer check catches it first
    reason = ("an integer state tensor (a step counter) differs" if wrong == "doubled update"
              else "after 2 steps the replayed state is ")
    assert t.step_mode.startswith(f"eager (fallback: {reason}"), t.step_mode
    assert wrong == "doubled update" or "tolerance 0.1%" in t.step_mode
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"note: train.cuda_graph: {reason}"), err
    assert fake_cuda.replays == loop.PROOF_STEPS  # never replayed for real
    assert_same(eager_weights(), t.model.state_dict())


def test_a_replay_within_the_stated_tolerance_is_accepted(fake_cuda):
    """Noise of the size a different kernel choice makes (float32: ~1e-7 relative per weight) passes."""
    def noisy(t):
        t._static_step()
        with torch.no_grad():
            for p in t.params:
                p.mul_(1 + 1e-7)

    fake_cuda.replay = noisy
    t = graphed(fake_cuda)
    t.train_epoch()
    assert t.step_mode == "cuda_graph"


def test_a_replay_with_non_finite_values_falls_back(fake_cuda):
    def poisoned(t):
        t._static_step()
        with torch.no_grad():
            t.params[0][(0,) * t.params[0].dim()] = float("nan")

    fake_cuda.replay = poisoned
    t = graphed(fake_cuda)
    t.train_epoch()
    assert t.step_mode == "eager (fallback: the replay produced non-finite values where the eager step did not)"
    assert all(torch.isfinite(p).all() for p in t.params)


def test_capture_warm_up_leaves_the_dropout_rng_where_it_was(fake_cuda, monkeypatch):
    """Paper VGG-16 has dropout, which draws from the CUDA generator: the warm-up, capture and proof steps
    must leave it as they found it, or the graphed run (and a resumed one) trains on other dropout masks.
    A small convolution + dropout net stands in for VGG-16 (its 4096-wide layers take a minute on a CPU)."""
    def small_dropout_net(name, variant, num_classes):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                   torch.nn.Dropout(0.5), torch.nn.Linear(8 * 8 * 8, num_classes))

    monkeypatch.setattr(loop, "build_model", small_dropout_net)
    t = graphed(fake_cuda)
    before = torch.get_rng_state()
    t._plan_epoch()
    t._prove_graph()
    assert torch.equal(torch.get_rng_state(), before) and fake_cuda.rng_reads >= 1
    assert t.step_mode == "cuda_graph"
    fresh = graphed(fake_cuda)
    fit(fresh)
    assert_same(eager_weights(), fresh.model.state_dict())


def test_no_capture_is_tried_without_cuda_and_the_mode_says_so():
    assert make(True).step_mode == "static (uncaptured: no CUDA)"
    assert make(False).step_mode == "eager"


# ----------------------------------------------------------------------------- float16 loss scaling
def test_a_scaled_step_equals_the_plain_step_and_an_overflow_is_skipped():
    """Scaling by a power of two and back is exact in float32, so the weights equal the unscaled step's
    (tolerance 0); an overflowing gradient skips the update, halves the scale, and leaves the weights alone."""
    plain, scaled = make(False), make(False)
    scaled.scaler = torch.amp.GradScaler("cpu")  # what precision fp16 sets on a GPU
    plain._plan_epoch(), scaled._plan_epoch()
    plain._eager_step(0), scaled._eager_step(0)
    assert_same(plain.model.state_dict(), scaled.model.state_dict())
    before = {k: v.clone() for k, v in scaled.model.state_dict().items() if "running" not in k and "num_batches" not in k}
    overflow = scaled.params[0].register_hook(lambda grad: grad * float("inf"))  # as a float16 gradient overflows
    scaled._eager_step(1)
    overflow.remove()
    after = scaled.model.state_dict()
    assert_same(before, {k: after[k] for k in before})
    assert scaled.scaler.get_scale() == 2.0 ** 15  # GradScaler's initial 2^16, halved
    assert "grad_scaler" in scaled.state_dict()


def test_fp16_training_is_never_captured():
    images, labels = toy()
    t = Trainer("resnet18", "cifar", 3, BASE, images, labels, seed=0, device=CPU, precision="fp16", cuda_graph=True)
    assert t.precision == "fp32"  # CPU: float32 whatever is asked
    with pytest.raises(ValueError, match="allowed: bf16 | fp16 | fp32"):
        Trainer("resnet18", "cifar", 3, BASE, images, labels, seed=0, device=CPU, precision="half")
