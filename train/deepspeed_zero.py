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

ZeRO-3 also partitions and hooks every parameter of the engine's module and requires every rank to call the hooked
modules in the same order, while the frozen CLIP runs only on ranks whose batch has an image.
`keep_frozen_towers_out_of_zero3` makes the accelerator build its engine with CLIP replaced by a whole copy whose weights
are buffers (same `state_dict` keys) and detached meanwhile, so ZeRO-3 neither partitions nor hooks it; no input is
made up for CLIP:

    keep_frozen_towers_out_of_zero3(trainer.accelerator)   # before accelerator.prepare; no-op unless ZeRO-3
"""

from __future__ import annotations

import contextlib

import torch
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




# ------------------------------------------------------------------------------------------- ZeRO-3: frozen CLIP
FROZEN_TOWERS = ("vision_tower",)  # frozen modules of the model that ZeRO-3 must neither partition nor hook


def _frozen_towers(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """(parent, attribute) of every frozen tower in `model` (plain or inside PEFT wrappers)."""
    found = []
    for parent in model.modules():
        for name in FROZEN_TOWERS:
            tower = parent._modules.get(name)
            if tower is not None and not any(param.requires_grad for param in tower.parameters()):
                found.append((parent, name))
    return found


@torch.no_grad()
def _replicated(tower: torch.nn.Module) -> torch.nn.Module:
    """A whole copy of a frozen tower, out of ZeRO-3's reach: built outside `zero.Init` (a plain constructor call),
    its weights gathered with `deepspeed.zero.GatheredParameters` when the tower was partitioned, and held as
    persistent buffers, not parameters (ZeRO-3 manages every parameter of the engine's module; buffers keep their
    names in `state_dict`, so saved folders are unchanged)."""
    import deepspeed

    with torch.random.fork_rng(devices=[]):  # its throw-away initialisation must not move the run's random stream
        plain = type(tower)(tower.config)
    partitioned = [param for param in tower.parameters() if hasattr(param, "ds_id")]
    with deepspeed.zero.GatheredParameters(partitioned, enabled=bool(partitioned)):
        plain.load_state_dict(tower.state_dict())
    for module in plain.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                del module._parameters[name]
                module.register_buffer(name, param.detach(), persistent=True)
    # `PreTrainedModel.dtype` / `.device` read the parameters: read the weights' buffers instead (under the same
    # qualified class name: transformers keys its output-capturing registry on it).
    base = type(tower)
    properties = {"dtype": _weights_dtype, "device": _weights_device, "__module__": base.__module__,
                  "__qualname__": base.__qualname__}
    plain.__class__ = type(base.__name__, (base,), properties)
    return plain.train(tower.training)


def _first_weight(module: torch.nn.Module) -> torch.Tensor:
    return next(buffer for buffer in module.buffers() if buffer.is_floating_point())


_weights_dtype = property(lambda self: _first_weight(self).dtype)
_weights_device = property(lambda self: _first_weight(self).device)


@contextlib.contextmanager
def towers_outside_engine(model: torch.nn.Module, device: torch.device):
    """Build the DeepSpeed engine around `model` with its frozen towers (CLIP) replaced by whole copies
    (`_replicated`) and detached meanwhile, so ZeRO-3 neither partitions nor hooks them: CLIP runs only on ranks whose
    batch has an image, and ZeRO-3 requires every rank to call its hooked modules in the same order. They are put back
    (on `device`) after."""
    towers = _frozen_towers(model)
    for parent, name in towers:
        parent._modules[name] = _replicated(parent._modules[name]).to(device)
    detached = [(parent, name, parent._modules.pop(name)) for parent, name in towers]
    try:
        yield
    finally:
        for parent, name, tower in detached:
            parent._modules[name] = tower


def keep_frozen_towers_out_of_zero3(accelerator: Accelerator) -> bool:
    """Make the accelerator build its ZeRO-3 engines with `towers_outside_engine`; returns whether it will."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero_stage != 3 or getattr(accelerator, "_towers_outside_engine", False):
        return False
    prepare = accelerator._prepare_deepspeed

    def prepare_without_towers(*args):
        with contextlib.ExitStack() as stack:
            for arg in args:
                if isinstance(arg, torch.nn.Module):
                    stack.enter_context(towers_outside_engine(arg, accelerator.device))
            return prepare(*args)

    accelerator._prepare_deepspeed = prepare_without_towers
    accelerator._towers_outside_engine = True
    return True


__all__ = ["OrderedReductionEngine", "install_ordered_reduction", "keep_frozen_towers_out_of_zero3", "towers_outside_engine"]
