"""Tolerances for comparing floats, each derived from what the two sides compute (not picked until a test passes).

A test either computes both sides the same way (then it compares exactly, or at a few float64 ulps), or it uses a
tolerance below, whose docstring says why it is the size it is.
"""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7: one rounding of a float32 number, relative
EPS64 = float(np.finfo(np.float64).eps)  # 2.2e-16

# Two float32 forward passes of one model over the same text that batch or pad differently (one text alone vs a
# padded batch, another thread count, ONNX Runtime's kernels vs PyTorch's) add the same numbers in another order.
# Each matmul, softmax and LayerNorm rounds at ~EPS32 of its operands, and the fixtures' large random weights
# (initializer_range=1) amplify that through the layers: measured up to 3.5e-5 x max|logit| (~300 EPS32) on a
# 2-layer tiny BERT at OMP_NUM_THREADS=1 and 2. 2**11 EPS32 (2.4e-4) keeps a ~7x margin over that and is still
# ~1000x smaller than any real defect (a wrong head, a softmax for a sigmoid, another model's weights).
FORWARD_REL = 2**11 * EPS32


def forward_atol(logits: np.ndarray) -> float:
    """Absolute tolerance on logits of two float32 forward passes that batch differently: FORWARD_REL x the
    largest |logit| (rounding is relative to the magnitudes that flow through the network).

    Also a bound for probabilities made from those logits: sigmoid and softmax move a probability by at most 1/4
    and 1/2 of a change in the logits (their Lipschitz constants in the max norm), and BCE / CE by at most 1.
    """
    return FORWARD_REL * max(float(np.abs(np.asarray(logits, dtype=np.float64)).max()), 1.0)


# A float32 softmax row sums to 1 up to one rounding per term and per add: k classes -> ~2k EPS32 (< 1e-6 for k <= 4).
SOFTMAX_SUM_ATOL = 1e-6

# A LoRA adapter applied on the fly (x W + x A B) vs merged into the weight (x (W + A B)): float32 rounds the product
# in another order at each adapted layer; with the tiny models' |logits| < ~10 that is ~1e-6, well under 1e-4.
MERGE_ATOL = 1e-4
