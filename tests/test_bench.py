"""The benchmark's arithmetic: its timings are never asserted, but the ratios it reports must be right."""

import pytest

from bench.throughput import paired


def test_paired_ratios_compare_each_project_epoch_with_the_side_epochs_around_it():
    # (wall, CPU) seconds; epoch 0 is the warm-up and is skipped
    run = {
        "epochs": [(99.0, 99.0), (4.0, 8.0), (6.0, 10.0), (5.0, 10.0)],
        "compute": [(1.0, 1.0), (2.0, 4.0), (4.0, 6.0), (6.0, 9.0), (4.0, 6.0)],
    }
    wall, cpu = paired(run, "epochs", "compute")
    # wall: (2+4)/2/4 = 0.75, (4+6)/2/6 = 0.833, (6+4)/2/5 = 1.0 -> median 0.833
    assert wall == pytest.approx(5 / 6)
    # CPU: (4+6)/2/8 = 0.625, (6+9)/2/10 = 0.75, (9+6)/2/10 = 0.75 -> median 0.75
    assert cpu == pytest.approx(0.75)
