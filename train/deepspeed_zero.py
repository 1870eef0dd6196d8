"""DeepSpeed ZeRO-2/3 with batches that differ between ranks (an image on one rank, none on another).

ZeRO-2 and ZeRO-3 reduce gradients from per-parameter hooks, in buckets filled in the order in which gradients become
ready, and a bucket's flat buffer is reduced as it is: the ranks must fill their buckets in the same order. That order
is the order of autograd's backward, so it follows each rank's graph. On a rank without an input image the visual
projector's (zero) gradient comes from a term tied to the loss and is ready first; on a rank with one it comes after
the whole LLM. The buckets then pair different parameters across ranks and the reduced gradients are wrong (not
merely reordered sums): measured, a step where one rank has no image gave ZeRO-2 a gradient norm of 1.407 against
DDP's 1.455, with wrong gradients in every layer. DDP is immune: its buckets are fixed by parameter index.

`OrderedReductionEngine` makes the order rank-independent with DeepSpeed's own `engine.coalesce_grad_reduction()`:
backward passes (every micro-batch of an optimizer step) leave their gradients on the parameters, and one reduction
pass over the parameters in the optimizer's order runs before `engine.step()`. `DreamLLMTrainer` installs it once the
engine exists:

    install_ordered_reduction(trainer.accelerator)   # no-op unless the accelerator drives a ZeRO-2/3 engine
"""

from __future__ import annotations

import contextlib

from accelerate import Accelerator
from accelerate.utils.deepspeed import DeepSpeedEngineWrapper


class OrderedReductionEngine(DeepSpeedEngineWrapper):
    """accelerate's engine wrapper, with each optimizer step's gradient reduction coalesced into one pass in parameter
    order (`DeepSpeedEngine.coalesce_grad_reduction`), opened at the step's first backward and closed before
    `engine.step()`, so gradient accumulation keeps one reduction per step."""

    _open: contextlib.AbstractContextManager | None = None

    def backward(self, loss, sync_gradients: bool = True, **kwargs) -> None:
        if self._open is None:
            self._open = self.engine.coalesce_grad_reduction()
            self._open.__enter__()
        self.engine.set_gradient_accumulation_boundary(is_boundary=sync_gradients)  # as accelerate's wrapper
        try:
            self.engine.backward(loss, **kwargs)
        except BaseException as error:
            self._close(error)
            raise
        if sync_gradients:
            self._close(None)  # the one reduction pass; it restores the boundary flag of the step's start
            self.engine.set_gradient_accumulation_boundary(is_boundary=True)
            self.engine.step()

    def _close(self, error: BaseException | None) -> None:
        opened, self._open = self._open, None
        if opened is not None:
            opened.__exit__(type(error) if error else None, error, error.__traceback__ if error else None)


def install_ordered_reduction(accelerator: Accelerator) -> bool:
    """Switch the accelerator's DeepSpeed engine wrapper to `OrderedReductionEngine`; returns whether it is in place.
    Only ZeRO stages that reduce from hooks and whose optimizer DeepSpeed can coalesce (2 and 3) are switched."""
    wrapped = getattr(accelerator, "deepspeed_engine_wrapped", None)
    if wrapped is None:
        return False
    if isinstance(wrapped, OrderedReductionEngine):
        return True
    engine = wrapped.engine
    if engine.zero_optimization_stage() not in (2, 3) or not hasattr(engine.optimizer, "_coalesce_grad_reduction"):
        return False
    wrapped.__class__ = OrderedReductionEngine
    return True


__all__ = ["OrderedReductionEngine", "install_ordered_reduction"]
