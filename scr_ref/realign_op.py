"""`scr.Realign` (SCR_SPEC section 2): the reference implementation and its torch custom op.

`realign_reference` is the one reference of the op: the model calls it through
the `scr::realign` custom op (so torch.export sees one opaque node to map to
the ONNX `scr.Realign` node), and tests and plugin checks compare against it.

Vectorised over tokens with prefix sums; all arithmetic in float32 whatever
the input dtype; only `m` is cast back to the dtype of `h`.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_KAPPA = 8.0


def realign_reference(
    h: Tensor,  # [B,T,D] float32 or float16
    m_prev: Tensor,  # [B,T,D] same dtype as h
    num_in: Tensor,  # [B,D] float32
    den_in: Tensor,  # [B,1] float32
    w_r: Tensor,  # [D]
    b_r: Tensor,  # [1]
    w_g: Tensor,  # [D]
    b_g: Tensor,  # [1]
    kappa: float = DEFAULT_KAPPA,
) -> tuple[Tensor, Tensor, Tensor]:
    f32 = torch.float32
    hf = h.to(f32)
    r = kappa * torch.tanh((hf @ w_r.to(f32) + b_r.to(f32)) / kappa)  # [B,T] in (-kappa, kappa)
    e = torch.exp(r - kappa)  # [B,T] in (exp(-2 kappa), 1]: never overflows
    num = num_in.to(f32).unsqueeze(1) + torch.cumsum(e.unsqueeze(-1) * hf, dim=1)  # [B,T,D]
    den = den_in.to(f32).unsqueeze(1) + torch.cumsum(e, dim=1).unsqueeze(-1)  # [B,T,1] > 0
    c = num / den  # [B,T,D] relevance-weighted mean of every token so far
    beta = torch.sigmoid(hf @ w_g.to(f32) + b_g.to(f32)).unsqueeze(-1)  # [B,T,1]
    m = (1 - beta) * m_prev.to(f32) + beta * c  # [B,T,D]
    return m.to(h.dtype), num[:, -1], den[:, -1]


@torch.library.custom_op("scr::realign", mutates_args=())
def realign(
    h: Tensor,
    m_prev: Tensor,
    num_in: Tensor,
    den_in: Tensor,
    w_r: Tensor,
    b_r: Tensor,
    w_g: Tensor,
    b_g: Tensor,
    kappa: float = DEFAULT_KAPPA,
) -> tuple[Tensor, Tensor, Tensor]:
    """The op as one opaque node; same contract as `realign_reference`."""
    m, num, den = realign_reference(h, m_prev, num_in, den_in, w_r, b_r, w_g, b_g, kappa)
    # custom ops may not return views of their inputs or of each other
    return m, num.clone(), den.clone()


@realign.register_fake
def _realign_fake(h, m_prev, num_in, den_in, w_r, b_r, w_g, b_g, kappa=DEFAULT_KAPPA):
    batch, _, width = h.shape
    return (
        h.new_empty(h.shape),
        h.new_empty((batch, width), dtype=torch.float32),
        h.new_empty((batch, 1), dtype=torch.float32),
    )


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:8])
    ctx.kappa = inputs[8]


def _backward(ctx, grad_m, grad_num, grad_den):
    # Recompute the reference under autograd: exact gradients, one definition of the math.
    inputs = [t.detach().requires_grad_(t.is_floating_point()) for t in ctx.saved_tensors]
    with torch.enable_grad():
        outputs = realign_reference(*inputs, ctx.kappa)
        pairs = [(o, g) for o, g in zip(outputs, (grad_m, grad_num, grad_den)) if g is not None]
        grads = torch.autograd.grad(
            [o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True
        )
    return (*grads, None)


realign.register_autograd(_backward, setup_context=_setup_context)
