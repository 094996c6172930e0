"""An exponential moving average of the weights, which checkpoints, validation and tests read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from cvae_lightning.harness import compat


def warmup_ema(decay: float, warmup: float):
    """The EMA update at decay min(decay, (1 + n) / (warmup + n)) after n updates, so a short run's average is
    of its last steps, not of all of them (the span: conf/callbacks/ema.yaml)."""

    def avg_fn(averaged, current, num_averaged):
        weight = 1 - min(decay, (1 + num_averaged) / (warmup + num_averaged))
        return averaged + (current - averaged) * weight

    return avg_fn


class EMA(EMAWeightAveraging):
    """Lightning's EMAWeightAveraging with a warming-up decay, whose hooks act only while fitting: after a fit
    the parent would load the trained weights over a best checkpoint's average for validate and test."""

    def __init__(self, *args, decay: float = 0.999, warmup: float = 10, **kwargs):
        super().__init__(*args, decay=decay, **kwargs)
        compat.set_averaging_fn(self, warmup_ema(decay, warmup))

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.state.fn == TrainerFn.FITTING:  # resuming: both weights back in place
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_validation_epoch_start(self, trainer, pl_module):
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_end(trainer, pl_module)


@contextmanager
def averaged_weights(trainer, pl_module) -> Iterator[None]:
    """The EMA callback's average (if any) in `pl_module` for the block, the trained weights back after it."""
    ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
    if ema is None:
        yield
        return
    compat.swap_averaged_weights(ema, pl_module)
    try:
        yield
    finally:
        compat.swap_averaged_weights(ema, pl_module)
