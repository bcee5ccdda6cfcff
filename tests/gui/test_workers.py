"""A job's progress reaches napari's progress bar."""


def test_progress_moves_napari_bar(qtbot):
    from napari_ssmamba.gui._workers import ProgressBridge

    bridge = ProgressBridge("Classifying ROIs")
    bar = bridge._bar
    values = []
    bar.events.value.connect(lambda event: values.append(event.value))
    bridge(3, 10, "Reading tiles")
    bridge(7, 10)
    qtbot.waitUntil(lambda: len(values) == 2, timeout=5_000)
    assert values == [3, 7] and bar.n == 7 and bar.total == 10
    assert bar.desc.startswith("Reading tiles")
    bridge.close()
