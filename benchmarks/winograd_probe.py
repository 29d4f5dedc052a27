"""Would Winograd convolution lower PDN-S's latency on this CPU? Direct (oneDNN) against Winograd.

Direct convolution cannot go below ``latency.convolution_floor`` (the multiply-adds at the heaviest layer's
rate); Winograd's F(m x m, r x r) does (m + r - 1)^2 multiplications per m x m outputs instead of m^2 r^2, 4x
fewer for F(3x3, 4x4) and F(4x4, 3x3). It pays only if its input and output transforms and its 36 smaller
matrix products run near the direct kernel's rate. This times, for PDN-S's three heavy convolution shapes at
256 x 256 (batch 1, channels-last, float32), the direct convolution and a Winograd one written in torch (eager
and under ``torch.compile``, which fuses the transforms), and checks that both give the same output:

    python benchmarks/winograd_probe.py --runs 10

A probe, not a code path: the detectors convolve directly.
"""
from __future__ import annotations

import sys

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from impeller_bench.inspection.latency import time_interleaved

POINTS = (0.0, 1.0, -1.0, 2.0, -2.0)  # with the point at infinity: alpha = 6 for both transforms timed


def winograd_matrices(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A^T (m x a), G (a x r), B^T (a x a), a = m + r - 1, for y = A^T [(G g) * (B^T d)], the correlation of
    a length-a input d with a length-r kernel g (Lagrange interpolation at ``POINTS`` and infinity; B^T solved
    from the identity sum_j A^T[i, j] G[j, k] B^T[j, l] = [l == i + k], which is checked)."""
    a = m + r - 1
    points = np.array(POINTS[: a - 1])
    a_t, g = np.zeros((m, a)), np.zeros((a, r))
    for j, p in enumerate(points):
        a_t[:, j] = p ** np.arange(m)
        g[j] = p ** np.arange(r) / np.prod([p - q for k, q in enumerate(points) if k != j])
    a_t[m - 1, a - 1] = g[a - 1, r - 1] = 1.0
    coefficients = np.einsum("ij,jk->ikj", a_t, g).reshape(m * r, a)
    target = np.zeros((m * r, a))
    for i in range(m):
        target[i * r + np.arange(r), i + np.arange(r)] = 1.0
    b_t = np.linalg.lstsq(coefficients, target, rcond=None)[0]
    if np.abs(coefficients @ b_t - target).max() > 1e-9:
        raise ValueError(f"no Winograd transform F({m}, {r}) at these points")
    return a_t, g, b_t


def combination(weights, terms):
    """sum_k weights[k] * terms[k], skipping the zero weights (the transforms are sparse)."""
    out = None
    for weight, term in zip(weights, terms):
        if abs(weight) > 1e-12:
            term = term if weight == 1 else -term if weight == -1 else term * float(weight)
            out = term if out is None else out + term
    return out


class WinogradConv2d(nn.Module):
    """``conv`` (stride 1, no padding) as Winograd F(m x m, r x r) on a channels-last input."""

    def __init__(self, conv: nn.Conv2d, m: int):
        super().__init__()
        cout, cin, r, _ = conv.weight.shape
        self.m, self.r, self.a = m, r, m + r - 1
        a_t, g, b_t = winograd_matrices(m, r)
        self.a_t, self.b_t = a_t.tolist(), b_t.tolist()
        g = torch.from_numpy(g)
        u = torch.einsum("ak,oikl,bl->abio", g, conv.weight.detach().double(), g)
        self.register_buffer("u", u.reshape(self.a ** 2, cin, cout).float().contiguous())
        self.register_buffer("bias", conv.bias.detach().float().clone())

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)  # N H W C: a view of channels-last memory
        n, h, w, c = x.shape
        m, r, a = self.m, self.r, self.a
        out_h, out_w = h - r + 1, w - r + 1
        tiles_h, tiles_w = -(-out_h // m), -(-out_w // m)
        x = F.pad(x, (0, 0, 0, tiles_w * m + r - 1 - w, 0, tiles_h * m + r - 1 - h))
        rows = [x[:, i: i + tiles_h * m: m] for i in range(a)]
        across = [combination(self.b_t[k], rows) for k in range(a)]
        v = torch.stack([combination(self.b_t[k], [t[:, :, j: j + tiles_w * m: m] for j in range(a)])
                         for t in across for k in range(a)])
        products = torch.bmm(v.view(a * a, -1, c), self.u).view(a, a, n, tiles_h, tiles_w, -1)
        half = [[combination(self.a_t[i], [products[k, l] for k in range(a)]) for l in range(a)] for i in range(m)]
        y = torch.stack([torch.stack([combination(self.a_t[j], half[i]) for j in range(m)]) for i in range(m)])
        y = y.permute(2, 3, 0, 4, 1, 5).reshape(n, tiles_h * m, tiles_w * m, -1)[:, :out_h, :out_w] + self.bias
        return y.permute(0, 3, 1, 2)


# PDN-S at 256 x 256: (in, out, kernel, input side, Winograd tile m)
SHAPES = ((128, 256, 4, 126, 3), (256, 256, 3, 61, 4), (256, 768, 4, 59, 3))


@click.command()
@click.option("--runs", default=10, show_default=True, type=click.IntRange(1))
def main(runs):
    """Per shape: direct, Winograd eager and Winograd compiled timed in turn, ``runs`` rounds after 3 (every
    round in a fresh random order, ``latency.time_interleaved``), median ms; then the three shapes' sums."""
    torch.manual_seed(0)
    totals = np.zeros(3)
    with torch.inference_mode():
        for cin, cout, kernel, side, m in SHAPES:
            conv = nn.Conv2d(cin, cout, kernel).eval().to(memory_format=torch.channels_last)
            x = torch.randn(1, cin, side, side).contiguous(memory_format=torch.channels_last)
            winograd = WinogradConv2d(conv, m).eval()
            direct = conv(x)
            error = float((winograd(x) - direct).abs().max() / direct.abs().max())
            compiled = torch.compile(winograd)
            compiled(x)
            calls = [lambda images, f=f: f(x) for f in (conv, winograd, compiled)]
            medians = np.array([np.median(t) for t in time_interleaved(calls, np.zeros((1, 1)), runs, 3)])
            totals += medians
            click.echo(f"conv {cin}->{cout} k{kernel} on {side}x{side}: direct {medians[0]:.1f} ms, Winograd "
                       f"F({m}x{m}, {kernel}x{kernel}) eager {medians[1]:.1f} ms, compiled {medians[2]:.1f} ms; "
                       f"max error / max |output| {error:.1e}")
    click.echo(f"the three shapes: direct {totals[0]:.1f} ms, Winograd eager {totals[1]:.1f} ms, "
               f"compiled {totals[2]:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
