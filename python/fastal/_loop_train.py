"""The training and evaluation pieces of the active-learning loop besides :func:`fastal.loop.fit`.

:func:`_loss` is cross-entropy, or the MSE of outputs and targets that :func:`_match` brings to one
shape (a scalar target may be ``(B,)`` or ``(B, 1)`` on either side; a broadcast would compare
B x B pairs); :func:`_check_trained` refuses a model that training left with NaN or Inf in a
parameter that was finite before (:func:`_nonfinite_parameters`); :func:`evaluate` scores a model
on the test set. :func:`fastal.loop.fit` and :func:`fastal.loop.run` call them, and
:mod:`fastal.pdcl`'s trainer matches its outputs with :func:`_match`.
"""

from __future__ import annotations

from typing import Any

from ._loop_data import _check_classes, _Data


def _nonfinite_parameters(model: Any) -> set[str]:
    """Names of the model's initialised parameters holding NaN or Inf before training (a mask of
    -inf on purpose; a lazy module's parameters are not initialised yet)."""
    import torch

    return {
        name
        for name, p in model.named_parameters()
        if not isinstance(p, torch.nn.parameter.UninitializedParameter)
        and not bool(torch.isfinite(p).all())
    }


def _check_trained(model: Any, steps: int, nonfinite_before: set[str]) -> None:
    """Refuse a model that training left with NaN / Inf in a trainable parameter that was finite
    (or initialised during training): it would still be evaluated (every argmax the first class)
    and select from NaN outputs. Frozen parameters and those non-finite before are left alone."""
    import torch

    diverged = _nonfinite_parameters(model) - nonfinite_before
    for name, p in model.named_parameters():
        if name in diverged and p.requires_grad:
            hint = (
                ": in float16, Adam's eps of 1e-8 rounds to 0; train in float32 or bfloat16, or "
                "pass your own train_fn"
                if p.dtype == torch.float16
                else ": lower lr, or pass your own train_fn"
            )
            raise ValueError(
                f"training diverged: parameter {name!r} ({str(p.dtype)[6:]}) holds NaN or Inf "
                f"after {steps} Adam steps{hint}"
            )


def _loss(out: Any, y: Any, task: str) -> Any:
    import torch.nn.functional as F

    if task == "classification":
        return F.cross_entropy(out, y)
    out, y = _match(out, y, "the labeled rows' targets")
    return F.mse_loss(out, y.to(out.dtype))


def _match(out: Any, y: Any, name: str) -> tuple[Any, Any]:
    """Regression outputs and targets of one shape: a scalar target may be (B,) or (B, 1) on
    either side; any other difference is an error (a broadcast would compare B x B pairs)."""
    if out.ndim == 2 and out.shape[1] == 1 and y.ndim == 1:
        out = out[:, 0]
    elif y.ndim == 2 and y.shape[1] == 1 and out.ndim == 1:
        y = y[:, 0]
    if out.shape != y.shape:
        raise ValueError(
            f"{name} have shape {tuple(y.shape)} but the model's outputs {tuple(out.shape)}"
        )
    return out, y


def evaluate(
    model: Any, data: _Data, task: str, *, device: Any, batch_size: int, **reading: Any
) -> float:
    """Test accuracy (classification) or mean squared error (regression); ``reading``: how
    :func:`fastal.torch.pool_outputs` reads the set (``collate_fn``, ``batch_fn``, ...)."""
    import torch

    from .torch import pool_outputs

    key = "logits" if task == "classification" else "outputs"
    out = pool_outputs(
        model, data.inputs, (key,), task=task, device=device, batch_size=batch_size,
        progress=False, **reading,
    )[key]  # fmt: skip
    y = data.all_labels()
    if task == "classification":
        _check_classes(y, out.shape[1], data.label_name)
        return float((out.argmax(1) == y.to(out.device)).to(torch.float64).mean())
    out, y = _match(out, y, data.label_name)
    return float(((out.to(torch.float64) - y.to(out.device, torch.float64)) ** 2).mean())
