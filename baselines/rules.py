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

**Only graphs the rule knows are accepted.** A guided backprop or deconvnet is only what it claims
when every non-linearity between the input and the output is an ``nn.ReLU`` module the rule
replaced; anything else (a functional ``F.relu`` next to ReLU modules, as in torchvision's
DenseNet; ``F.threshold``, ``torch.maximum(z, 0)``, ``F.leaky_relu(z, 0)``, ``F.hardtanh(z, 0, 6)``,
``z * (z > 0)``; GELU, SiLU, softmax...) would make the map partly the plain gradient, silently. So
while a non-plain rule is active:

* the model may hold no activation module of ``torch.nn`` other than ``nn.ReLU`` (a ViT's
  ``nn.GELU`` is refused before anything runs, naming the module);
* a :class:`torch.overrides.TorchFunctionMode` watches every forward that records a graph. Outside
  the ``nn.ReLU`` modules, each torch function applied to an *activation* (the forward's input or
  any tensor with an autograd history: one computed from the parameters inside the forward counts
  too, so a model that transforms its weights in its forward is refused) must be one of :data:`LINEAR_OPS` (affine maps, sums, shape and indexing
  operations; ``mul``, ``div``, ``matmul`` with at most one activation operand, ``div`` only with
  an activation numerator; batch norm and dropout in eval mode only) or :data:`SWITCH_OPS` (max
  pooling and max/min reductions, which back-propagate through their forward switches as the rules
  assume). :data:`RECTIFIER_OPS` (``relu``, ``threshold``, ``leaky_relu``, ``maximum``, ...) pass
  only where they change no value of the batch (there they are the identity), :data:`CLIP_OPS`
  (``clamp``, ``hardtanh``, ``minimum``, ...) only where they raise no value (no lower bound acts:
  a saturation from above gives a zero gradient under every rule); a comparison of an activation
  (``z > 0``) is refused as a data-dependent mask; any other function is refused as unknown, so
  the check depends on the batch only through the rectifiers and clips. The error is a
  :class:`~an8flower.errors.UsageError` naming the model, the function and the reason.

Functions applied only to constants (positional tables, ``torch.zeros``) are not watched, nor code
outside the model's forward (an explainer's post-processing). Forwards run without a graph
(``torch.no_grad``) are not watched either: they carry no rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from an8flower.baselines.base import HookScope
from an8flower.errors import UsageError

__all__ = ["RELU_RULES", "LINEAR_OPS", "SWITCH_OPS", "RECTIFIER_OPS", "CLIP_OPS", "backward_rules", "modified_gradient",
           "stride_fix_backward"]

#: The ReLU backward rules :func:`backward_rules` accepts.
RELU_RULES: tuple[str, ...] = ("gradient", "guided", "deconvnet")


def _names(*groups: str) -> frozenset[str]:
    return frozenset(name for group in groups for name in group.split())


#: Functions (by ``__name__``) linear in their activation operand, or that only move, select or
#: describe its elements; see "Only graphs the rule knows are accepted".
LINEAR_OPS: frozenset[str] = _names(
    "__get__ size dim numel __len__ __iter__ __getitem__ __format__ view view_as reshape reshape_as flatten unflatten",
    "contiguous permute transpose t movedim squeeze unsqueeze expand expand_as repeat narrow select index_select",
    "split chunk unbind cat concat concatenate stack flip roll to float double half bfloat16 type type_as clone",
    "detach requires_grad_ zeros_like ones_like full_like empty_like rand_like randn_like new_zeros new_ones",
    "new_full new_empty",
    "add add_ __add__ __radd__ __iadd__ sub sub_ __sub__ __rsub__ __isub__ neg __neg__ sum mean",
    "conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d linear",
    "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d",
    "pad interpolate pixel_shuffle pixel_unshuffle",
)
#: Products: linear when at most one operand is an activation (and, for a quotient, not the divisor).
_PRODUCTS: frozenset[str] = _names("mul mul_ __mul__ __rmul__ __imul__ matmul __matmul__ mm bmm einsum",
                                   "div div_ __truediv__ __itruediv__")
#: Functions linear in eval mode (their ``training`` argument False).
_EVAL_ONLY: dict[str, int] = {"batch_norm": 5, "dropout": 2, "dropout1d": 2, "dropout2d": 2, "dropout3d": 2,
                              "alpha_dropout": 2, "feature_alpha_dropout": 2}
#: Functions that back-propagate through their forward switches (max pooling; max/min reductions).
SWITCH_OPS: frozenset[str] = _names("max_pool1d max_pool2d max_pool3d max_pool2d_with_indices adaptive_max_pool1d",
                                    "adaptive_max_pool2d adaptive_max_pool3d amax amin max min")
#: Rectifiers: accepted only where they change no value of the batch.
RECTIFIER_OPS: frozenset[str] = _names("relu relu_ relu6 threshold threshold_ leaky_relu leaky_relu_ maximum fmax")
#: Clips: accepted only where they raise no value of the batch (no lower bound acts); a
#: saturation from above alone passes (a saturated unit has a zero gradient under every rule).
CLIP_OPS: frozenset[str] = _names("clamp clamp_ clip clip_ clamp_min clamp_min_ clamp_max clamp_max_ hardtanh",
                                  "hardtanh_ minimum fmin")
_COMPARISONS: frozenset[str] = _names("gt ge lt le eq ne __gt__ __ge__ __lt__ __le__ __eq__ __ne__ greater",
                                      "greater_equal less less_equal sign sgn heaviside where")


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
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
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
            modules, with activation modules other than ``nn.ReLU``, or whose forward applies a
            function the rule does not know (see the module docstring).
    """
    if relu not in RELU_RULES:
        raise UsageError(f"unknown relu rule {relu!r}; choose from {', '.join(RELU_RULES)}")
    if relu != "gradient":
        _refuse_other_activation_modules(model, relu)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if relu != "gradient" and not relus:
        raise UsageError(
            f"relu={relu!r} needs the model's ReLUs as nn.ReLU modules; {type(model).__name__} has none "
            "(functional F.relu calls cannot be hooked)"
        )
    inplace = [m for m in relus if m.inplace]
    scope = HookScope()
    guard = _RuleGuard(relu, type(model).__name__) if relu != "gradient" else None
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
            for module in model.modules():
                if isinstance(module, nn.Conv2d) and tuple(module.stride) != (1, 1):
                    scope.add(module.register_forward_hook(_stride_fix_hook, prepend=True))
        if guard is None:
            yield scope
        else:
            with guard:
                yield scope
    finally:
        scope.__exit__(None, None, None)
        for m in inplace:
            m.inplace = True


def _refuse_other_activation_modules(model: nn.Module, rule: str) -> None:
    from torch.nn.modules import activation

    for name, m in model.named_modules():
        if type(m).__module__ == activation.__name__ and not isinstance(m, nn.ReLU):
            raise UsageError(
                f"relu={rule!r} is defined for networks whose non-linearities are ReLUs: {type(model).__name__} has "
                f"a {type(m).__name__} module ({name or 'the model'}), which the rule does not replace, so the map "
                "would be partly the plain gradient; use a gradient-based explainer (e.g. gradient, integrated "
                "gradients) for this model"
            )


def _tensors(args: Any) -> Iterator[torch.Tensor]:
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, torch.Tensor))


class _RuleGuard(torch.overrides.TorchFunctionMode):
    """Refuses, during the model's forward, every function on an activation that the rule does not know.

    ``start``/``stop`` are the model's own pre- and post-hooks (code outside the forward, such as an
    explainer's post-processing, is not watched; ``start`` records the forward's input tensors);
    ``enter``/``leave`` those of every ``nn.ReLU``, inside which nothing is watched. See "Only graphs
    the rule knows are accepted" in the module docstring.
    """

    def __init__(self, rule: str, model_name: str) -> None:
        super().__init__()
        self.rule, self.model_name, self.depth, self.forwards = rule, model_name, 0, 0
        self.inputs: set[int] = set()

    def start(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.forwards += 1
        self.inputs.update(id(t) for t in _tensors(inputs))

    def stop(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self.forwards -= 1
        if not self.forwards:
            self.inputs.clear()

    def enter(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.depth += 1

    def leave(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self.depth -= 1

    def _is_activation(self, t: torch.Tensor) -> bool:
        return t.grad_fn is not None or id(t) in self.inputs

    def _refuse(self, name: str, why: str) -> UsageError:
        return UsageError(
            f"relu={self.rule!r}: {self.model_name} {why} ({name} called in a forward), so the rule would not apply "
            "there and the result would be partly the plain gradient; the rule accepts only models whose "
            "non-linearities are nn.ReLU modules"
        )

    def _check(self, func: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """Raise for a function the rule does not know; ``"any"`` (a rectifier) or ``"raised"`` (a
        clip) when the output must be compared with the input, else None."""
        acts = [t for t in _tensors((*args, *kwargs.values())) if self._is_activation(t)]
        if not acts or name in LINEAR_OPS:
            return None
        if name in _PRODUCTS:
            divisor = args[1:2] if name.startswith(("div", "__truediv", "__itruediv")) else ()
            if len(acts) > 1 or any(isinstance(d, torch.Tensor) and self._is_activation(d) for d in divisor):
                raise self._refuse(name, "multiplies activations together")
            return None
        if name in _EVAL_ONLY:
            position = _EVAL_ONLY[name]
            training = kwargs.get("training", args[position] if len(args) > position else False)
            if training:
                raise self._refuse(name, "runs a training-mode layer")
            return None
        if name in ("max", "min") and len(args) > 1 and isinstance(args[1], torch.Tensor):
            return "any" if name == "max" else "raised"  # the elementwise forms: maximum, minimum
        if name in SWITCH_OPS:
            return None
        if name in RECTIFIER_OPS:
            return "any"
        if name in CLIP_OPS:
            return "raised"
        if name in _COMPARISONS:
            raise self._refuse(name, "compares an activation (a data-dependent mask, such as z * (z > 0))")
        raise self._refuse(name, "applies a function the rule does not know")

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.forwards <= 0 or self.depth > 0 or not torch.is_grad_enabled():
            return func(*args, **kwargs)
        name = getattr(func, "__name__", repr(func))
        if name.startswith("_") and not name.startswith("__"):
            name = name[1:]  # torch.nn.functional's dispatchers: _threshold, _max_pool2d
        compare = self._check(func, name, args, kwargs)
        before = args[0].detach().clone() if compare and name.endswith("_") else None
        out = func(*args, **kwargs)
        if compare:
            x = (before if before is not None else args[0]).detach()
            if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                raise self._refuse(name, "rectifies outside its nn.ReLU modules")
            changed = out.detach() != x if compare == "any" else out.detach() > x
            if changed.any():
                raise self._refuse(name, "rectifies outside its nn.ReLU modules")
        return out


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
