"""CUDA graphs for the classifier: bucket sizes and lifetimes here, replay against eager on the GPU."""

import gc

import numpy as np
import pytest
import torch

from napari_ssmamba.inference import graphs
from napari_ssmamba.inference.graphs import bucket_size, fit_to_buckets, graphed_classifier
from napari_ssmamba.inference.predict import (
    TileClassifier,
    batch_sizes,
    predict_tiles,
    schedule_buckets,
    warm_up_model,
)


def test_walk_model_finds_every_parameter_and_buffer_and_training(small_model):
    model, _ = small_model
    shared = torch.nn.Linear(2, 2)
    wrapper = torch.nn.ModuleDict({"model": model, "a": shared, "b": shared}).eval()
    wrapper.register_buffer("scale", torch.ones(1))
    tensors, training = graphs.walk_model(wrapper)
    assert not training
    expected = [*wrapper.parameters(), *wrapper.buffers()]  # shared ones once
    assert {id(t) for t in tensors} == {id(t) for t in expected}
    assert len(tensors) == len(expected) + 2  # the shared Linear's weight and bias, twice
    shared.train()
    assert graphs.walk_model(wrapper)[1]
    shared.eval()


def test_bucket_sizes():
    assert [bucket_size(n) for n in (1, 2, 3, 5, 17, 32)] == [1, 2, 4, 8, 32, 32]
    assert [bucket_size(n) for n in (33, 64, 65, 132, 256)] == [64, 64, 96, 160, 256]
    with pytest.raises(ValueError):
        bucket_size(0)


def test_batch_sizes_cover_every_tile_once():
    assert batch_sizes(600, 256) == [256, 256, 88]
    assert batch_sizes(10, 256) == [10]
    assert batch_sizes(0, 256) == []
    # from a small first batch, doubling up to the batch size
    assert batch_sizes(132, 256, 32) == [32, 64, 36]
    assert batch_sizes(1213, 256, 32) == [32, 64, 128, 256, 256, 256, 221]
    assert batch_sizes(20, 256, 32) == [20]
    assert batch_sizes(100, 16, 32) == [16] * 6 + [4]
    # growing by half, in whole graph buckets of 32
    assert batch_sizes(1000, 256, 32, 1.5) == [32, 64, 96, 160, 256, 256, 136]


def test_schedule_buckets_are_those_of_the_growing_batches():
    assert schedule_buckets(256, 64, 2.0) == [64, 128, 256]
    assert schedule_buckets(256, 32, 1.5) == [32, 64, 96, 160, 256]
    assert schedule_buckets(128) == [128]
    assert schedule_buckets(100, 64) == [64, 128]  # 100 runs in the 128 graph
    # a run's last batch runs padded in one of these buckets, or split where that pads less
    # (152 as 128 + 24: 192 tiles run, not 256)
    for n, sizes in ((37, [37]), (132, [64, 68]), (600, [64, 128, 256, 128, 24])):
        assert fit_to_buckets(batch_sizes(n, 256, 64), schedule_buckets(256, 64)) == sizes


def test_batches_are_cut_to_the_buckets_captured():
    # a moved ROI: 165 tiles planned as 64 + 101, with graphs for 64 and 96 only: 101 runs as
    # 64 + 37 (128 tiles run, padding included), not as 96 + 5 (160)
    assert fit_to_buckets([64, 101], [64, 96]) == [64, 64, 37]
    # the benchmark ROI (132 tiles as 64 + 68) after the whole slide's and the model's graphs: 68
    # runs whole in the 96 graph rather than as 64 + 4 in two 64 graphs
    assert fit_to_buckets([64, 68], [64, 96, 128, 160, 192, 256]) == [64, 68]
    assert fit_to_buckets([20], [64, 256]) == [20]
    assert fit_to_buckets([256, 256, 10], [256]) == [256, 256, 10]
    assert fit_to_buckets([300], [32, 128]) == [128, 128, 32, 12]
    assert fit_to_buckets([5], []) == [5]
    for sizes, captured in (([64, 101], [64, 96]), ([300], [32, 128]), ([7, 9], [4])):
        assert sum(fit_to_buckets(sizes, captured)) == sum(sizes)


def test_graphs_are_kept_per_model_and_leave_with_it():
    model = torch.nn.Linear(2, 2)
    made = []
    first = graphed_classifier(model, ("a",), lambda: made.append(1) or object())
    assert graphed_classifier(model, ("a",), lambda: made.append(1) or object()) is first
    assert graphed_classifier(model, ("b",), lambda: made.append(1) or object()) is not first
    assert len(made) == 2
    key = id(model)
    del model
    gc.collect()
    assert key not in graphs._per_model


def test_the_cpu_runs_eagerly(small_model):
    model, card = small_model
    tiles = np.zeros((3, 64, 64, 3), np.uint8)
    out = predict_tiles(lambda box: tiles[0], np.zeros((3, 4)), model, card, device="cpu")
    assert out.cuda_graphs is False
    assert TileClassifier(model, card, torch.device("cpu")).graphs is None


def _tiles(n, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)).cuda()


@pytest.mark.gpu
@pytest.mark.parametrize("attention", [False, True])
def test_graph_replay_gives_the_eager_answer_for_any_batch_size(small_model, attention):
    model, card = small_model
    device = torch.device("cuda")
    graphed = TileClassifier(model, card, device, attention=attention)
    eager = TileClassifier(model, card, device, attention=attention, cuda_graphs=False)
    assert graphed.graphs is not None and eager.graphs is None
    for n in (1, 5, 33, 70, 64):  # 70 then 64: a bucket left with stale rows past the batch
        tiles = _tiles(n, seed=n)
        got, want = graphed(tiles), eager(tiles)
        assert got[0].shape == (n, 3)
        torch.testing.assert_close(got[0], want[0], atol=2e-2, rtol=0)
        if attention:
            torch.testing.assert_close(got[1], want[1], atol=2e-2, rtol=0)
        else:
            assert got[1] is None
    assert graphed.graphs.failure is None
    model.cpu()


@pytest.mark.gpu
def test_graphs_follow_new_weights_and_moved_parameters(small_model):
    model, card = small_model
    device = torch.device("cuda")
    tiles = _tiles(8)
    classify = TileClassifier(model, card, device, attention=False)
    before = classify(tiles)[0]
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():  # new weights in place: the same graph reads them
            model.head.weight.mul_(-1.0)
        flipped = classify(tiles)[0]
        eager = TileClassifier(model, card, device, attention=False, cuda_graphs=False)
        torch.testing.assert_close(flipped, eager(tiles)[0], atol=2e-2, rtol=0)
        assert not torch.allclose(flipped, before, atol=1e-3)
        model.cpu()  # parameters move away and back: the graphs are captured again
        classify = TileClassifier(model, card, device, attention=False)
        torch.testing.assert_close(classify(tiles)[0], eager(tiles)[0], atol=2e-2, rtol=0)
    finally:
        model.load_state_dict(original)
        model.cpu()


class SyncsOnTheHost(torch.nn.Module):
    """A model whose forward reads a value back to the host: it cannot be captured."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        if x.sum().item() < 0:
            raise AssertionError("unreachable")
        return self.model(x)


@pytest.mark.gpu
def test_a_model_that_cannot_be_captured_runs_eagerly(small_model):
    model, card = small_model
    wrapped = SyncsOnTheHost(model)
    boxes = np.zeros((5, 4))
    tile = np.full((64, 64, 3), 128, np.uint8)
    out = predict_tiles(
        lambda box: tile, boxes, wrapped, card, device="cuda", attention=False, batch_size=4
    )
    reference = predict_tiles(
        lambda box: tile, boxes, model, card, device="cuda", attention=False, cuda_graphs=False
    )
    assert out.cuda_graphs is False
    np.testing.assert_allclose(out.probabilities, reference.probabilities, atol=2e-2)
    model.cpu()


@pytest.mark.gpu
def test_threads_sharing_a_model_get_their_own_answers(small_model):
    import concurrent.futures

    model, card = small_model
    device = torch.device("cuda")
    batches = [_tiles(16, seed=seed) for seed in range(8)]
    eager = TileClassifier(model, card, device, attention=False, cuda_graphs=False)
    want = [eager(b)[0] for b in batches]

    def classify(i):
        with torch.cuda.stream(torch.cuda.Stream(device)):
            probs = TileClassifier(model, card, device, attention=False)(batches[i])[0]
            torch.cuda.current_stream(device).synchronize()
        return probs

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(classify, range(len(batches))))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=2e-2, rtol=0)
    model.cpu()


@pytest.mark.gpu
def test_after_warm_up_no_run_captures_a_graph(small_model):
    from napari_ssmamba.model import create_model

    _, card = small_model
    torch.manual_seed(0)
    model = create_model("ssmamba_test", num_classes=3).eval()  # no graphs from other tests
    device = torch.device("cuda")
    warm_up_model(model, card, "cuda", attention=False)
    classify = TileClassifier(model, card, device, attention=False)
    assert classify.graphs.captured((64, 64)) == [64, 128, 256]
    eager = TileClassifier(model, card, device, attention=False, cuda_graphs=False)
    for n in (37, 132, 300):  # last batches of 37, 68 and 108 tiles: no bucket of their own
        tiles = _tiles(n, seed=n)
        out = predict_tiles(
            lambda box, tiles=tiles: tiles[int(box[0])].cpu().numpy(),
            np.array([[i, 0, 64, 64] for i in range(n)]),
            model,
            card,
            device="cuda",
            attention=False,
        )
        assert classify.graphs.captured((64, 64)) == [64, 128, 256]  # nothing new captured
        assert out.cuda_graphs
        np.testing.assert_allclose(out.probabilities, eager(tiles)[0].cpu().numpy(), atol=2e-2)
