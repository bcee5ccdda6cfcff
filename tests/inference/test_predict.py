import threading
import time

import numpy as np
import pytest
import torch

from napari_ssmamba.errors import CancelledError
from napari_ssmamba.inference.predict import SlideTileReader, predict_tiles
from napari_ssmamba.inference.tiling import tile_geometry


def _reader(box):
    rng = np.random.default_rng(int(box[0]) * 7 + int(box[1]))
    return rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)


BOXES = np.array([[i * 64, 0, 64, 64] for i in range(10)])


def test_probabilities_sum_to_one_and_attention_is_per_tile(small_model):
    model, card = small_model
    out = predict_tiles(_reader, BOXES, model, card, device="cpu", batch_size=4)
    assert out.probabilities.shape == (10, 3)
    np.testing.assert_allclose(out.probabilities.sum(1), 1.0, atol=1e-5)
    assert out.attention.shape == (10, 16, 16)
    assert 0.0 <= out.attention.min() and out.attention.max() <= 1.0


class OutOfMemoryOverBatch(torch.nn.Module):
    """Wraps a model and raises CUDA's out-of-memory error for batches larger than ``limit``."""

    def __init__(self, model, limit):
        super().__init__()
        self.model, self.limit, self.calls = model, limit, []

    def forward(self, x):
        self.calls.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(x)

    def lpr_maps(self, x):
        return self.model.lpr_maps(x)


def test_out_of_memory_halves_the_batch_and_gives_the_same_answer(small_model):
    model, card = small_model
    reference = predict_tiles(
        _reader, BOXES, model, card, device="cpu", batch_size=10, attention=False
    )
    wrapped = OutOfMemoryOverBatch(model, limit=3)
    out = predict_tiles(_reader, BOXES, wrapped, card, device="cpu", batch_size=10, attention=False)
    assert out.batch_size == 2
    assert wrapped.calls[:3] == [10, 5, 2]
    np.testing.assert_allclose(out.probabilities, reference.probabilities, atol=1e-5)


def test_cancel_between_batches(small_model):
    model, card = small_model
    cancel = threading.Event()
    seen = []

    def progress(done, total, message):
        seen.append(done)
        if done >= 2:
            cancel.set()

    with pytest.raises(CancelledError):
        predict_tiles(
            _reader,
            BOXES,
            model,
            card,
            device="cpu",
            batch_size=2,
            attention=False,
            progress=progress,
            cancel=cancel,
        )
    assert seen == [0, 2]


def test_slide_reader_resamples_and_pads_outside_the_slide(sample_slide):
    g = tile_geometry(sample_slide.mpp, sample_slide.level_downsamples, 64, 2.0)
    reader = SlideTileReader(sample_slide, g)
    width, _ = sample_slide.dimensions
    tile = reader([width - g.tile_l0 // 2, 0, g.tile_l0, g.tile_l0])
    assert tile.shape == (64, 64, 3) and tile.dtype == np.uint8
    assert (tile[:, -20:] == 255).all()  # the right half lies off the slide: white


def test_a_read_error_reaches_the_caller(small_model):
    from napari_ssmamba.errors import SlideError

    model, card = small_model

    def broken_reader(box):
        if box[0] >= 5 * 64:
            raise SlideError("tile.svs: Bogus marker length (simulated)")
        return _reader(box)

    with pytest.raises(SlideError, match="Bogus marker"):
        predict_tiles(
            broken_reader, BOXES, model, card, device="cpu", batch_size=2, attention=False
        )


class PlannedReader:
    """A batch reader in two halves, like JpegBatchReader: ``plan`` on the host, ``make`` after.

    Notes the thread each half ran on; ``fail_at`` makes the plan of that batch raise.
    """

    def __init__(self, fail_at=None):
        self.threads = {"plan": set(), "make": set()}
        self.fail_at, self.planned = fail_at, 0

    def plan(self, boxes):
        self.threads["plan"].add(threading.current_thread().name)
        self.planned += 1
        if self.planned == self.fail_at:
            raise ValueError("slide.tif: JPEG tile 7 is 3 components of 64 x 64 px (simulated)")
        return boxes

    def make(self, boxes, decoding=None):
        self.threads["make"].add(threading.current_thread().name)
        if decoding is not None:
            decoding()
        return torch.from_numpy(np.stack([_reader(box) for box in boxes]))


def _pipeline_threads():
    return {t.name for t in threading.enumerate() if t.name.startswith("tile-pipeline")}


def test_batches_are_planned_and_made_on_two_threads(small_model):
    model, card = small_model
    reader = PlannedReader()
    batched = predict_tiles(
        reader, BOXES, model, card, device="cpu", batch_size=3, attention=False, batched=True
    )
    boxwise = predict_tiles(
        _reader, BOXES, model, card, device="cpu", batch_size=3, attention=False
    )
    # the first batch is planned and made by the caller, the others planned by one pipeline
    # thread while another makes them
    caller = threading.current_thread().name
    planners, makers = reader.threads["plan"] - {caller}, reader.threads["make"] - {caller}
    assert caller in reader.threads["plan"] and caller in reader.threads["make"]
    assert len(planners) == 1 and len(makers) == 1
    assert (planners | makers) <= _pipeline_threads()
    assert not planners & makers
    np.testing.assert_allclose(batched.probabilities, boxwise.probabilities, atol=1e-6)


class NotedDecode(PlannedReader):
    """Notes, in order, each plan, each decode's start and the model's set-up, with its thread."""

    def __init__(self):
        super().__init__()
        self.events = []

    def plan(self, boxes):
        self.events.append(("plan", threading.current_thread().name))
        return super().plan(boxes)

    def make(self, boxes, decoding=None):
        def noted():
            self.events.append(("decode", threading.current_thread().name))
            decoding()
            time.sleep(0.2)  # the decode's time: the model is set up meanwhile

        return super().make(boxes, noted if decoding is not None else None)


def test_the_model_is_set_up_while_the_first_batch_decodes(small_model, monkeypatch):
    # the first batch is planned, and its decode started, by the caller before any other thread
    # runs Python; the model is then set up on the planner thread, before the next plans
    from napari_ssmamba.inference import predict

    model, card = small_model
    reader = NotedDecode()
    set_up = predict.TileClassifier.__init__

    def noted_set_up(self, *args, **kwargs):
        reader.events.append(("set up", threading.current_thread().name))
        set_up(self, *args, **kwargs)

    monkeypatch.setattr(predict.TileClassifier, "__init__", noted_set_up)
    out = predict_tiles(
        reader, BOXES, model, card, device="cpu", batch_size=3, attention=False, batched=True
    )
    assert out.probabilities.shape == (10, 3)
    caller = threading.current_thread().name
    steps = [step for step, _ in reader.events]
    assert steps == ["plan", "decode", "set up", "plan", "plan", "plan"]
    threads = [thread for _, thread in reader.events]
    assert threads[:2] == [caller, caller]
    assert threads[2] != caller and set(threads[2:]) == {threads[2]}


@pytest.fixture
def batch_readers(monkeypatch):
    """The _BatchReaders predict_tiles makes, kept for looking at after the call."""
    from napari_ssmamba.inference import predict

    made = []

    class Kept(predict._BatchReader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(predict, "_BatchReader", Kept)
    return made


def _assert_stopped(readers):
    assert readers and all(task.done() for reader in readers for task in reader._tasks)


def test_a_planning_error_reaches_the_caller_and_the_work_stops(small_model, batch_readers):
    model, card = small_model
    with pytest.raises(ValueError, match="JPEG tile 7"):
        predict_tiles(
            PlannedReader(fail_at=3),
            BOXES,
            model,
            card,
            device="cpu",
            batch_size=1,
            attention=False,
            batched=True,
        )
    _assert_stopped(batch_readers)


def test_an_error_planning_the_first_batch_reaches_the_caller(small_model):
    model, card = small_model
    with pytest.raises(ValueError, match="JPEG tile 7"):
        predict_tiles(PlannedReader(fail_at=1), BOXES, model, card, device="cpu", batched=True)


def test_a_model_that_cannot_be_set_up_leaves_no_reader_running(small_model, batch_readers):
    import dataclasses

    model, card = small_model
    card = dataclasses.replace(card, mean=(0.5, 0.5))  # two channels: cannot normalise RGB
    with pytest.raises(RuntimeError):
        predict_tiles(PlannedReader(), BOXES, model, card, device="cpu", batch_size=1, batched=True)
    _assert_stopped(batch_readers)


class SlowFirstBatch(PlannedReader):
    """Makes its first batch slowly, so that every run's planner is started before any batcher."""

    def make(self, boxes, decoding=None):
        if not self.threads["make"]:
            time.sleep(0.5)
        return super().make(boxes, decoding)


def test_more_runs_at_once_than_shared_threads_all_finish(small_model):
    # a planner on a shared thread waits for its batcher: with every shared thread held by a
    # planner, runs past SHARED_RUNS must bring threads of their own or none would finish
    from concurrent.futures import ThreadPoolExecutor

    from napari_ssmamba.inference.predict import SHARED_RUNS

    model, card = small_model
    runs = 2 * SHARED_RUNS + 4

    def run(_):
        return predict_tiles(
            SlowFirstBatch(), BOXES, model, card, device="cpu", batch_size=1, attention=False,
            batched=True,
        )

    with ThreadPoolExecutor(runs) as callers:
        results = list(callers.map(run, range(runs), timeout=60))
    assert all(len(result.probabilities) == len(BOXES) for result in results)


def test_a_cuda_device_torch_cannot_reach_is_named_with_the_fix():
    from napari_ssmamba.errors import BackendUnavailableError
    from napari_ssmamba.inference.predict import resolve_device

    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, or "cuda:0" on a CPU
    with pytest.raises(BackendUnavailableError, match=f"'{missing}' was asked for.*Choose 'cpu'"):
        resolve_device(missing)
    for other in ("mps", "bogus"):
        with pytest.raises(BackendUnavailableError, match=f"'{other}': SSMamba runs on 'cpu' or"):
            resolve_device(other)
    assert resolve_device("cpu").type == "cpu"
