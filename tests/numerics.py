"""Tolerances derived from the arithmetic, not from what one CPU printed.

Runs that must agree but sum in a different order (several processes vs one, packed vs padded
batches) are compared in float64. Why that is enough, and how large a difference may be:

- Unit roundoff u = 2**-53 ≈ 1.1e-16. A sum of n terms reordered changes by at most ~n·u·Σ|terms|;
  the tiny test models' gradients are sums of < 1e4 products of magnitude < 1, so two orders
  differ by Δg ≤ 1e4 · 1.1e-16 ≈ 1.1e-12 (float32's u ≈ 6e-8 makes the same bound 6e-4).
- Adam's step lr·m̂/(√v̂ + ε) is Lipschitz in the gradient with constant ≤ lr/ε (ε = 1e-8), so a
  step moves by at most lr·Δg/ε, and over `steps` steps a weight by steps·lr·Δg/ε (the drift of the
  weights themselves feeds back only at second order). In float32 Δg/ε reaches 1, which is why
  Adam turns summation order into differences of about lr; in float64 it is ≤ 1.1e-4.
- A loss moves by Σ_i g_i·δ_i when weight i moves by δ_i. Adam's amplification is largest where the
  gradient is small: δ_i ≤ lr·Δg·ε/(|g_i| + ε)² per step, so |g_i|·δ_i ≤ lr·Δg/4. Summed over n
  trainable weights and the steps, a loss differs by ≤ n·steps·lr·Δg (first order in Δg, which is
  ~1e-12: the second order is negligible), plus the loss's own reduction, ≤ 20 nats·MAX_TERMS·u.
  `loss_atol` adds a factor 100 of margin for what first order leaves out.
"""

UNIT_ROUNDOFF_F64 = 2.0**-53
MAX_TERMS = 1e4  # terms in one reduction (gradient of one weight, one attention row) in the tiny models
ADAM_EPS = 1e-8  # torch.optim.AdamW's default, which needlework's training uses

GRAD_ATOL_F64 = MAX_TERMS * UNIT_ROUNDOFF_F64  # ≈ 1.1e-12: reordering error of one float64 reduction


def adam_weight_atol(lr: float, steps: int) -> float:
    """Largest difference order-of-summation can make in a float64 weight after `steps` Adam steps."""
    return steps * lr * GRAD_ATOL_F64 / ADAM_EPS


def loss_atol(lr: float, steps: int, n_params: int) -> float:
    """Largest difference in a float64 loss after `steps` steps of `n_params` trainable weights."""
    return 100 * (n_params * steps * lr * GRAD_ATOL_F64 + 20 * GRAD_ATOL_F64)


# float32 attention logits q·k of a tiny model (head_dim ≤ 64, |q_i·k_i| ≤ ~10) carry a rounding error of
# at most head_dim·u32·10 ≈ 4e-5; two kernels (eager vs SDPA, batched vs not) may round differently, so an
# argmax is only comparable across them when the top two logits differ by more than twice that, i.e.
# when the second probability is below the first by a factor exp(-8e-5) ≈ 1 - 8e-5.
ARGMAX_REL_MARGIN = 1e-4


def assert_clear_argmax(probs) -> int:
    """The argmax of one attention row (probabilities), after checking it is not a near-tie that
    rounding could flip between kernels or CPUs (a fixture with such a tie must be changed)."""
    top = probs.topk(2).values if probs.numel() > 1 else None
    if top is not None:
        assert float(top[1]) < float(top[0]) * (1 - ARGMAX_REL_MARGIN), (
            f"near-tie in the reference attention ({float(top[0])!r} vs {float(top[1])!r}): rounding could flip "
            "the argmax between kernels; sharpen the fixture's attention or change its seed"
        )
    return int(probs.argmax())
