"""Modified backward rules: the one implementation behind gradient, guided backprop, deconvnet and VEBI.

Inside :func:`backward_rules`, autograd through a model follows a chosen rule at every ``nn.ReLU``
module and, optionally, the stride fix at every strided ``nn.Conv2d``:

* ``relu="gradient"``: the plain gradient, ``R_in = 1[x > 0] * R_out`` (Simonyan et al., ICLR-W 2014);
* ``relu="guided"``: guided backpropagation, ``R_in = 1[x > 0] * max(R_out, 0)`` (Springenberg et al.,
  ICLR-W 2015);
* ``relu="deconvnet"``: the deconvnet, ``R_in = max(R_out, 0)``, ignoring the forward mask (Zeiler &
  Fergus, ECCV 2014).

Max-pooling propagates through the forward switches and convolutions are transposed, which is what
plain autograd does, so they need no rule. Batch norm in eval mode is a per-channel affine map and
back-propagates as such.

**Stride fix** (Oramas et al., ICLR 2019, on the checkerboard artifacts of deconvnet-based
visualisations): a convolution with stride ``s > 1`` transposed with its stride scatters the signal
on a grid of period ``s``. With ``stride_fix=True`` the incoming signal (B, C_out, H_out, W_out) is
instead upsampled by nearest neighbour by ``s`` to the size a stride-1 convolution would produce,
``H_1 = H + 2p - d(k - 1)`` (the excess ``s * H_out - H_1 >= 0`` rows/columns at the bottom/right are
cropped), and the convolution is transposed with stride 1 and the same padding, dilation and groups,
which returns exactly the input size ``H``. This holds for any kernel, stride, padding (including
non-zero padding modes), odd or even sizes and any position in the network.

The rules are carried by the outputs of the hooked modules (a forward hook swaps each output for
that of a :class:`torch.autograd.Function` with the rule as its backward), so they apply whatever
tensor the backward pass starts from: the logits, or the activation of an intermediate layer
seeded with ``torch.autograd.grad(outputs=act, inputs=images, grad_outputs=seed)``. The rule hooks
are prepended, so hooks that another component registers on the same modules see the
rule-carrying outputs whatever the registration order.

Requirements: ReLUs must be ``nn.ReLU`` modules (a functional ``F.relu`` in a ``forward`` cannot be
hooked and would back-propagate as the plain gradient); one module may be called several times
(each call is hooked). In-place ReLUs are switched to out-of-place inside the block and restored
on exit.

**Unhooked rectifications are refused.** A model that defines ``nn.ReLU`` modules but also
rectifies functionally (torchvision's DenseNet ends with ``F.relu(features)``) would get a guided
backprop or deconvnet that is only partly guided, silently. While a non-plain rule is active, a
:class:`torch.overrides.TorchFunctionMode` watches the forward pass: a rectification that runs
outside an ``nn.ReLU`` module's call raises :class:`~an8flower.errors.UsageError` naming the
function. Rectifications are :data:`RECTIFICATIONS` (``relu``, ``relu_``, ``relu6``,
``threshold``, ``threshold_``) and ``clamp``/``clamp_min`` (and their in-place forms) with
``min = 0`` and no ``max``. Other activations (GELU, SiLU, leaky ReLU...) are not rectifications
and the rules do not touch them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from an8flower.baselines.base import HookScope
from an8flower.errors import UsageError

__all__ = ["RELU_RULES", "RECTIFICATIONS", "backward_rules", "modified_gradient", "stride_fix_backward"]

#: The ReLU backward rules :func:`backward_rules` accepts.
RELU_RULES: tuple[str, ...] = ("gradient", "guided", "deconvnet")
#: Functions (by ``__name__``) that rectify their input; see "Unhooked rectifications are refused".
RECTIFICATIONS: frozenset[str] = frozenset({"relu", "relu_", "relu6", "threshold", "threshold_"})
_CLAMPS: frozenset[str] = frozenset({"clamp", "clamp_", "clamp_min", "clamp_min_", "clip", "clip_"})


class _GuidedReLU(torch.autograd.Function):
    """ReLU forward; backward ``1[x > 0] * max(grad, 0)``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(x)
        ctx.save_for_backward(y)  # y > 0 exactly where x > 0; no separate mask is kept
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        # ReLU's own fused backward kernel (grad where y > 0, else 0), then the positive part.
        return torch.ops.aten.threshold_backward(grad, y, 0).clamp_(min=0)


class _DeconvReLU(torch.autograd.Function):
    """ReLU forward; backward ``max(grad, 0)`` (no forward mask)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


_RELU_FUNCTIONS = {"guided": _GuidedReLU, "deconvnet": _DeconvReLU}


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    if isinstance(conv.padding, str):
        # "same" is rejected by PyTorch for strided convolutions, so only "valid" (no padding) remains.
        return (0, 0)
    return (int(conv.padding[0]), int(conv.padding[1]))


def stride_fix_backward(grad_out: torch.Tensor, conv: nn.Conv2d, input_size: tuple[int, int]) -> torch.Tensor:
    """Back-propagate ``grad_out`` through ``conv`` with the stride fix.

    Nearest-neighbour upsample ``grad_out`` (B, C_out, H_out, W_out) by the stride, crop it to the
    stride-1 output size ``H_1 = H_pad - d (k - 1)`` (``H_pad`` the padded input size) and transpose
    the convolution with stride 1.

    Args:
        grad_out: signal arriving at the convolution's output.
        conv: the strided ``nn.Conv2d``.
        input_size: (H, W) of the convolution's input.

    Returns:
        The signal at the convolution's input, (B, C_in, H, W).
    """
    sh, sw = conv.stride
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    ph, pw = _conv_padding(conv)
    h, w = input_size
    zero_pad = conv.padding_mode == "zeros"
    h_pad, w_pad = (h + 2 * ph, w + 2 * pw)
    h1, w1 = h_pad - dh * (kh - 1), w_pad - dw * (kw - 1)
    up = grad_out.repeat_interleave(sh, dim=2).repeat_interleave(sw, dim=3)[:, :, :h1, :w1]
    weight = conv.weight.detach().to(up.dtype)
    if zero_pad:
        return F.conv_transpose2d(up, weight, None, stride=1, padding=(ph, pw), dilation=conv.dilation, groups=conv.groups)
    # Reflect/replicate/circular padding: transpose onto the padded input, then back through the pad.
    grad_padded = F.conv_transpose2d(up, weight, None, stride=1, padding=0, dilation=conv.dilation, groups=conv.groups)
    with torch.enable_grad():
        probe = torch.zeros(grad_padded.shape[0], grad_padded.shape[1], h, w, dtype=up.dtype, device=up.device)
        probe.requires_grad_(True)
        padded = F.pad(probe, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        (grad_in,) = torch.autograd.grad(padded, probe, grad_padded)
    return grad_in


class _StrideFixConv(torch.autograd.Function):
    """Identity on the convolution's output in forward; the stride-fix transpose in backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        ctx.conv = conv
        ctx.input_size = (x.shape[-2], x.shape[-1])
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], None, None]:
        return stride_fix_backward(grad, ctx.conv, ctx.input_size), None, None


def _relu_hook(function: type[torch.autograd.Function]) -> Any:
    def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return function.apply(inputs[0])

    return hook


def _stride_fix_hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    return _StrideFixConv.apply(inputs[0], output, module)


@contextmanager
def backward_rules(model: nn.Module, relu: str = "gradient", stride_fix: bool = False) -> Iterator[HookScope]:
    """Inside the block, autograd through ``model`` uses modified backward rules.

    Args:
        model: the network; its ReLUs must be ``nn.ReLU`` modules (see the module docstring).
        relu: ``"gradient"`` (plain), ``"guided"`` (``1[x > 0] * max(R, 0)``, Springenberg et al. 2015)
            or ``"deconvnet"`` (``max(R, 0)``, Zeiler & Fergus 2014).
        stride_fix: back-propagate every ``nn.Conv2d`` with stride > 1 by nearest-neighbour
            upsampling and a stride-1 transpose (Oramas et al. 2019); see :func:`stride_fix_backward`.

    Yields:
        The :class:`~an8flower.baselines.base.HookScope` holding the rule hooks; callers may add their
        own hooks to it. Every hook is removed and every in-place ReLU restored on exit, errors
        included. Only forwards run inside the block carry the rules.

    Raises:
        UsageError: an unknown ``relu`` rule, or a non-plain rule on a model without ``nn.ReLU``
            modules.
    """
    if relu not in RELU_RULES:
        raise UsageError(f"unknown relu rule {relu!r}; choose from {', '.join(RELU_RULES)}")
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if relu != "gradient" and not relus:
        raise UsageError(
            f"relu={relu!r} needs the model's ReLUs as nn.ReLU modules; {type(model).__name__} has none "
            "(functional F.relu calls cannot be hooked)"
        )
    inplace = [m for m in relus if m.inplace]
    scope = HookScope()
    guard = _RectificationGuard(relu, type(model).__name__) if relu != "gradient" else None
    try:
        for m in inplace:
            m.inplace = False
        if guard is not None:
            hook = _relu_hook(_RELU_FUNCTIONS[relu])
            scope.add(model.register_forward_pre_hook(guard.start))
            scope.add(model.register_forward_hook(guard.stop, always_call=True))
            for m in relus:
                scope.add(m.register_forward_pre_hook(guard.enter))
                scope.add(m.register_forward_hook(hook, prepend=True))
                scope.add(m.register_forward_hook(guard.leave, always_call=True))
        if stride_fix:
            for m in model.modules():
                if isinstance(m, nn.Conv2d) and tuple(m.stride) != (1, 1):
                    scope.add(m.register_forward_hook(_stride_fix_hook, prepend=True))
        if guard is None:
            yield scope
        else:
            with guard:
                yield scope
    finally:
        scope.__exit__(None, None, None)
        for m in inplace:
            m.inplace = True


def _is_rectification(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    name = getattr(func, "__name__", "")
    if name in RECTIFICATIONS:
        return True
    if name not in _CLAMPS:
        return False
    lo = kwargs.get("min", args[1] if len(args) > 1 else None)
    hi = kwargs.get("max", args[2] if len(args) > 2 else None)
    return hi is None and isinstance(lo, (int, float)) and not isinstance(lo, bool) and lo == 0


class _RectificationGuard(torch.overrides.TorchFunctionMode):
    """Refuses rectifications that run outside an ``nn.ReLU`` module during the model's forward.

    ``start``/``stop`` are the model's own pre- and post-hooks (code outside the forward, such as
    an explainer's post-processing, is not watched); ``enter``/``leave`` those of every
    ``nn.ReLU``. A rectification seen inside the forward at ReLU depth 0 is one the rule does not
    cover.
    """

    def __init__(self, rule: str, model_name: str) -> None:
        super().__init__()
        self.rule, self.model_name, self.depth, self.forwards = rule, model_name, 0, 0

    def start(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.forwards += 1

    def stop(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self.forwards -= 1

    def enter(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.depth += 1

    def leave(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self.depth -= 1

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        if self.forwards > 0 and self.depth == 0 and _is_rectification(func, args, kwargs):
            name = getattr(func, "__name__", repr(func))
            raise UsageError(
                f"relu={self.rule!r}: {self.model_name} rectifies outside its nn.ReLU modules ({name} called in a "
                "forward), so the rule would not apply there and the result would be partly the plain gradient; "
                "replace the functional call by an nn.ReLU module"
            )
        return func(*args, **kwargs)


def modified_gradient(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    relu: str = "gradient",
    stride_fix: bool = False,
) -> torch.Tensor:
    """``d logit[target] / d input`` of every image under the backward rules, in one batched pass.

    Args:
        model: maps (B, C, H, W) to logits (B, K); images are not checked here (the explainers'
            ``__call__`` does that).
        images: (B, C, H, W) floating tensor on the model's device.
        targets: (B,) long class indices.
        relu, stride_fix: as in :func:`backward_rules`.

    Returns:
        (B, C, H, W) the modified gradient, detached. Parameter ``.grad`` fields are left untouched
        (only the input's gradient is computed).
    """
    x = images.detach().requires_grad_(True)
    with torch.enable_grad(), backward_rules(model, relu=relu, stride_fix=stride_fix):
        logits = model(x)
        score = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()
        (grad,) = torch.autograd.grad(score, x)
    return grad.detach()
