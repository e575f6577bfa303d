"""Whole-step CUDA graphs: an inference forward, or a training step (forward, loss, backward, gradient clipping,
optimizer step), captured once and replayed with new data copied into static input buffers.

Why: eager training of models made of many small layers (NAT-T's 30 blocks, EfficientViT's per-head cascade,
BiFormer's router) is bound by Python and dispatch time on a slow host, not by the GPU. A replay launches the recorded
kernels with one host call, so the step costs its GPU time. Requirements, checked where they can be:
- one input shape per graph (capture another object for another shape);
- no host synchronisation inside the step (vitzoo's ops have none; ``torch.cuda.set_sync_debug_mode`` finds them);
- an optimizer whose state lives on the GPU (torch's ``capturable=True``) and no GradScaler (it syncs every step);
- autocast without its cache of cast weights, which would be filled once inside the capture.

A train step's warm-up and capture run inside :func:`vitzoo.models._step_kernels.graph_step_kernels`: the zoo's
LayerNorms then use the Triton forward and backward in training too (inference forwards always do). Eager training
keeps torch's norm, whose host cost is lower; a replay has no host cost, and the kernels take about a tenth of the GPU
time.

Replays write parameters in place without going through the dispatcher, so their version counters would not move;
:class:`GraphedTrainStep` bumps them after every replay so that caches keyed on them (``vitzoo.ops._weight_cache``:
folded conv-BN weights, the neighborhood op's logit blocks used by eval forwards) see the new weights. While a
capture is under way the weight cache is not used at all: a cached tensor would be read at capture time and go stale
in later replays. Models with caches of their own are frozen into a :class:`GraphedForward` the same way (timm's
EfficientViT-MSRA and LeViT keep eval attention biases): capture again after changing their weights.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Dict, Iterator, Optional

import torch
from torch import nn

from vitzoo.models._step_kernels import graph_step_kernels

__all__ = ["GraphedForward", "GraphedTrainStep", "WARMUP_STEPS"]

# Eager iterations on a side stream before the capture (torch's recipe): they create lazy state (optimizer moments,
# the ops' geometry caches, cuBLAS workspaces) and run Triton's autotuner, none of which may happen while capturing.
WARMUP_STEPS = 3


def _require_cuda(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.device.type != "cuda":
        where = t.device if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a CUDA tensor to capture a CUDA graph, got {where}")


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    # cache_enabled=False: autocast's per-region cache of cast weights would hold the capture's casts
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


@contextlib.contextmanager
def _side_stream() -> Iterator[None]:
    """Warm-up work on a side stream, as torch's capture recipe does (it keeps capture-time allocations apart)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream().wait_stream(stream)


def _check_static(x: torch.Tensor, static: torch.Tensor, name: str) -> None:
    if x.shape != static.shape or x.dtype != static.dtype:
        raise ValueError(f"{name}: shape {tuple(x.shape)} / {x.dtype} differs from the captured "
                         f"{tuple(static.shape)} / {static.dtype}; a CUDA graph replays one shape (capture another "
                         f"object for another shape)")


class GraphedForward:
    """``model(x)`` under ``torch.no_grad`` (and autocast to ``amp_dtype``) at the shape of ``example``.

    The returned tensor is the graph's static output: the next call overwrites it (clone it to keep it). Weights may
    change in place between calls; the replay reads them (no weight-derived cache is recorded into the graph)."""

    def __init__(self, model: nn.Module, example: torch.Tensor, amp_dtype: Optional[torch.dtype] = None,
                 warmup: int = WARMUP_STEPS):
        _require_cuda(example, "example")
        self.model, self.amp_dtype = model, amp_dtype
        self.static_input = example.clone()  # keeps the memory format (channels_last stays channels_last)
        with torch.no_grad():
            with _side_stream():
                for _ in range(warmup):
                    self._run()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_output = self._run()

    def _run(self) -> torch.Tensor:
        with _autocast(self.static_input.device, self.amp_dtype):
            return self.model(self.static_input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_static(x, self.static_input, "x")
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output


class GraphedTrainStep:
    """One training step of ``model`` at the shapes of ``example_input`` / ``example_target``: forward under autocast
    to ``amp_dtype``, ``loss_fn(output, target)``, backward, ``clip_grad()`` if given, ``optimizer.step()``.

    Calling it copies the batch into the static buffers, copies each param group's current ``lr`` (a float a
    scheduler may have set) into the graph's learning-rate tensors, replays, and returns the static loss (overwritten
    by the next call). Gradients are written (not accumulated) by every replay, so there is no ``zero_grad``.
    The warm-up steps run on the first batch and are undone (parameters, buffers, optimizer state, CUDA RNG), so the
    first call is the first real step, as in eager training."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], example_input: torch.Tensor,
                 example_target: torch.Tensor, amp_dtype: Optional[torch.dtype] = None,
                 clip_grad: Optional[Callable[[], None]] = None, warmup: int = WARMUP_STEPS):
        for i, group in enumerate(optimizer.param_groups):
            if group.get("capturable") is False:
                raise ValueError(f"optimizer: param group {i} of {type(optimizer).__name__} has capturable=False; "
                                 "create the optimizer with capturable=True so that its step state lives on the GPU")
        _require_cuda(example_input, "example_input")
        _require_cuda(example_target, "example_target")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.amp_dtype, self.clip_grad = amp_dtype, clip_grad
        self.static_input, self.static_target = example_input.clone(), example_target.clone()
        device = example_input.device
        # A float lr would be baked into the recorded kernels; a tensor is read at every replay.
        self._lr = [torch.tensor(float(g["lr"]), device=device) for g in optimizer.param_groups]
        self._state_tensors = list(model.parameters()) + list(model.buffers())

        saved = self._snapshot(device)
        with self._lr_tensors(), graph_step_kernels(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")  # warm-up steps run uncaptured
            with _side_stream():
                for _ in range(warmup):
                    optimizer.zero_grad(set_to_none=True)
                    self._step()
            self._restore(saved, device)
            optimizer.zero_grad(set_to_none=True)  # the capture's backward allocates the gradients it then rewrites
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_loss = self._step()

    @contextlib.contextmanager
    def _lr_tensors(self) -> Iterator[None]:
        groups = self.optimizer.param_groups
        floats = [g["lr"] for g in groups]
        for g, lr in zip(groups, self._lr):
            g["lr"] = lr
        try:
            yield
        finally:  # schedulers and logs keep seeing floats
            for g, lr in zip(groups, floats):
                g["lr"] = lr

    def _snapshot(self, device: torch.device) -> Dict:
        state = {p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in self.optimizer.state.items()}
        return {"tensors": [t.detach().clone() for t in self._state_tensors], "optimizer": state,
                "rng": torch.cuda.get_rng_state(device)}

    def _restore(self, saved: Dict, device: torch.device) -> None:
        with torch.no_grad():
            for t, value in zip(self._state_tensors, saved["tensors"]):
                t.copy_(value)
            for p, state in self.optimizer.state.items():
                before = saved["optimizer"].get(p, {})
                for k, v in state.items():
                    if not torch.is_tensor(v):
                        raise ValueError(f"optimizer: {type(self.optimizer).__name__} keeps its state {k!r} as a "
                                         f"Python {type(v).__name__}; a replayed step could not update it")
                    if k in before:
                        v.copy_(before[k])
                    else:  # state the warm-up created: zeros are a fresh state (Adam's moments and step count,
                        v.zero_()  # SGD's momentum without dampening)
        torch.cuda.set_rng_state(saved["rng"], device)

    def _step(self) -> torch.Tensor:
        with _autocast(self.static_input.device, self.amp_dtype):
            loss = self.loss_fn(self.model(self.static_input), self.static_target)
        loss.backward()
        if self.clip_grad is not None:
            self.clip_grad()
        self.optimizer.step()
        return loss.detach()

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_static(x, self.static_input, "x")
        _check_static(target, self.static_target, "target")
        self.static_input.copy_(x)
        self.static_target.copy_(target)
        for g, lr in zip(self.optimizer.param_groups, self._lr):
            lr.fill_(g["lr"])
        self.graph.replay()
        torch.autograd.graph.increment_version(self._state_tensors)  # see the module docstring
        return self.static_loss
