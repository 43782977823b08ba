"""Neural-network primitives fused for speed: softmax family, nll_loss, conv2d, pooling,
batch_norm and embedding."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from engine.ops import Primitive, register

# softmax family ---------------------------------------------------------------------------


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


@register
class Softmax(Primitive):
    name = "softmax"

    def forward(x, axis=-1):
        return _softmax(x, axis)

    def vjp(g, node):
        y, axis = node.out, node.attrs["axis"]
        gy = g * y
        return (gy - y * gy.sum(axis=axis, keepdims=True),)

    def jvp(t, node):
        y, axis = node.out, node.attrs["axis"]
        return y * (t[0] - (y * t[0]).sum(axis=axis, keepdims=True))

    def onnx(ctx, ins, node):
        return ctx.node("Softmax", ins, axis=node.attrs["axis"])


@register
class LogSoftmax(Primitive):
    name = "log_softmax"

    def forward(x, axis=-1):
        shifted = x - x.max(axis=axis, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    def vjp(g, node):
        axis = node.attrs["axis"]
        return (g - np.exp(node.out) * g.sum(axis=axis, keepdims=True),)

    def jvp(t, node):
        axis = node.attrs["axis"]
        return t[0] - (np.exp(node.out) * t[0]).sum(axis=axis, keepdims=True)

    def onnx(ctx, ins, node):
        return ctx.node("LogSoftmax", ins, axis=node.attrs["axis"])


def _class_last(a):
    """(N, C, d1, ...) -> (M, C) view/copy with the class axis last."""
    if a.ndim == 2:
        return a
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


@register
class NLLLoss(Primitive):
    """Negative log-likelihood of integer targets given log-probabilities (N, C, ...).

    `weight` is None or a per-class weight array; reduction is 'mean', 'sum' or 'none'.
    """

    name = "nll_loss"
    saves = True

    def forward(logp, target, reduction="mean", ignore_index=-100, weight=None):
        lp = _class_last(logp)
        t = target.reshape(-1).astype(np.int64, copy=False)
        keep = t != ignore_index
        safe = np.where(keep, t, 0)
        if safe.size and (safe.min() < 0 or safe.max() >= lp.shape[1]):
            raise IndexError(f"nll_loss: target out of range for {lp.shape[1]} classes")
        w = keep.astype(logp.dtype)
        if weight is not None:
            w = w * weight[safe]
        picked = -lp[np.arange(lp.shape[0]), safe] * w
        if reduction == "none":
            out = picked.reshape(target.shape)
        elif reduction == "sum":
            out = picked.sum()
        else:
            out = picked.sum() / w.sum()
        return np.asarray(out, dtype=logp.dtype), (safe, w)

    def vjp(g, node):
        logp = node.xs[0]
        safe, w = node.saved
        reduction = node.attrs["reduction"]
        if reduction == "none":
            coef = -w * g.reshape(-1)
        elif reduction == "sum":
            coef = -w * g
        else:
            coef = -w * (g / w.sum())
        grad = np.zeros((safe.shape[0], logp.shape[1]), dtype=logp.dtype)
        grad[np.arange(safe.shape[0]), safe] = coef
        if logp.ndim > 2:
            rest = (logp.shape[0],) + logp.shape[2:] + (logp.shape[1],)
            grad = np.moveaxis(grad.reshape(rest), -1, 1)
        return (grad, None)

    def jvp(t, node):
        safe, w = node.saved
        tl = _class_last(t[0])
        picked = -tl[np.arange(tl.shape[0]), safe] * w
        reduction = node.attrs["reduction"]
        if reduction == "none":
            return picked.reshape(node.xs[1].shape)
        if reduction == "sum":
            return np.asarray(picked.sum())
        return np.asarray(picked.sum() / w.sum())

    def onnx(ctx, ins, node):
        attrs = {"reduction": node.attrs["reduction"], "ignore_index": node.attrs["ignore_index"]}
        inputs = list(ins)
        if node.attrs["weight"] is not None:
            inputs.append(ctx.const(np.asarray(node.attrs["weight"]), "class_weight"))
        return ctx.node("NegativeLogLikelihoodLoss", inputs, **attrs)


# convolution and pooling -----------------------------------------------------------------


def _out_size(n, k, s, p, d=1):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _windows(xp, kh, kw, stride, dilation, ho, wo):
    """Read-only strided view (N, C, Ho, Wo, kh, kw) of the (padded) input."""
    sn, sc, sh, sw = xp.strides
    shape = (xp.shape[0], xp.shape[1], ho, wo, kh, kw)
    strides = (sn, sc, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1])
    return as_strided(xp, shape, strides, writeable=False)


def _pad2d(x, padding, value=0.0):
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _unpad2d(xp, padding):
    ph, pw = padding
    return xp[:, :, ph : xp.shape[2] - ph, pw : xp.shape[3] - pw]


def _scatter_windows(parts, x_shape, padding, stride, dilation, dtype):
    """col2im: add each kernel offset's (N, C, Ho, Wo) part back with one strided slice-add."""
    n, c, h, w = x_shape
    ph, pw = padding
    dx = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dtype)
    for (i, j), part in parts:
        ho, wo = part.shape[2], part.shape[3]
        r0, c0 = i * dilation[0], j * dilation[1]
        dx[:, :, r0 : r0 + stride[0] * (ho - 1) + 1 : stride[0],
           c0 : c0 + stride[1] * (wo - 1) + 1 : stride[1]] += part  # fmt: skip
    return _unpad2d(dx, padding)


def _im2col(x, kh, kw, stride, padding, dilation):
    """(N, C, H, W) -> contiguous columns (N*Ho*Wo, kh*kw*C) for one big GEMM.

    Channels go innermost (an NHWC copy of the input), so the window copy here and the
    slice-adds of the gradient move contiguous runs of C values.
    """
    n, c, h, w = x.shape
    ph, pw = padding
    ho = _out_size(h, kh, stride[0], ph, dilation[0])
    wo = _out_size(w, kw, stride[1], pw, dilation[1])
    xp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    xp[:, ph : ph + h, pw : pw + w] = x.transpose(0, 2, 3, 1)
    sn, sh, sw, sc = xp.strides
    shape = (n, ho, wo, kh, kw, c)
    strides = (sn, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1], sc)
    win = as_strided(xp, shape, strides, writeable=False)
    return np.ascontiguousarray(win).reshape(n * ho * wo, kh * kw * c), ho, wo


def _weight_matrix(w):
    """(O, C, kh, kw) -> (O, kh*kw*C), matching _im2col's feature order."""
    return w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)


def _nhwc_rows(a):
    """(N, C, H, W) -> (N*H*W, C) contiguous."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).reshape(-1, a.shape[1])


def _conv(x, w, stride, padding, dilation, groups, bias=None):
    """The (N, O, Ho, Wo) output and, per group, the columns kept for the weight gradient."""
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    og = o // groups
    out = None
    all_cols = []
    for gi in range(groups):
        xg = x if groups == 1 else x[:, gi * cg : (gi + 1) * cg]
        cols, ho, wo = _im2col(xg, kh, kw, stride, padding, dilation)
        res = cols @ _weight_matrix(w[gi * og : (gi + 1) * og]).T
        if groups == 1:
            out = res
        else:
            if out is None:
                out = np.empty((res.shape[0], o), dtype=res.dtype)
            out[:, gi * og : (gi + 1) * og] = res
        all_cols.append(cols)
    if bias is not None:
        out += bias
    out = np.ascontiguousarray(out.reshape(n, ho, wo, o).transpose(0, 3, 1, 2))
    return out, all_cols


@register
class Conv2d(Primitive):
    """2-D convolution (N, C, H, W) x (O, C/groups, kh, kw) [+ bias (O,)]: im2col + one GEMM."""

    name = "conv2d"
    saves = True

    def forward(x, w, *bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
        if x.ndim != 4 or w.ndim != 4:
            raise ValueError(f"conv2d expects 4-D input and weight, got {x.shape} and {w.shape}")
        if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
            raise ValueError(
                f"conv2d: input has {x.shape[1]} channels, weight expects "
                f"{w.shape[1] * groups} (C/groups={w.shape[1]}, groups={groups})"
            )
        return _conv(x, w, stride, padding, dilation, groups, bias[0] if bias else None)

    def vjp(g, node):
        x, w = node.xs[0], node.xs[1]
        a = node.attrs
        stride, (ph, pw), dilation, groups = a["stride"], a["padding"], a["dilation"], a["groups"]
        o, cg, kh, kw = w.shape
        og = o // groups
        n, c, h, wd = x.shape
        ho, wo = g.shape[2], g.shape[3]
        g2 = _nhwc_rows(g)
        gx = np.empty(x.shape, dtype=g.dtype) if node.needs[0] else None
        gw = np.empty(w.shape, dtype=g.dtype) if node.needs[1] else None
        for gi, cols in enumerate(node.saved):
            go = g2[:, gi * og : (gi + 1) * og]
            if gw is not None:
                gwg = (go.T @ cols).reshape(og, kh, kw, cg)
                gw[gi * og : (gi + 1) * og] = gwg.transpose(0, 3, 1, 2)
            if gx is not None:
                dcols = go @ _weight_matrix(w[gi * og : (gi + 1) * og])
                dcols = dcols.reshape(n, ho, wo, kh, kw, cg)
                dx = np.zeros((n, h + 2 * ph, wd + 2 * pw, cg), dtype=g.dtype)
                for i in range(kh):
                    for j in range(kw):
                        r0, c0 = i * dilation[0], j * dilation[1]
                        rows = slice(r0, r0 + stride[0] * (ho - 1) + 1, stride[0])
                        cols_ = slice(c0, c0 + stride[1] * (wo - 1) + 1, stride[1])
                        dx[:, rows, cols_] += dcols[:, :, :, i, j]
                gx[:, gi * cg : (gi + 1) * cg] = dx[:, ph : ph + h, pw : pw + wd].transpose(
                    0, 3, 1, 2
                )
        gb = g2.sum(axis=0) if len(node.xs) == 3 and node.needs[2] else None
        return (gx, gw, gb) if len(node.xs) == 3 else (gx, gw)

    def jvp(t, node):
        x, w = node.xs[0], node.xs[1]
        a = node.attrs
        conv = (a["stride"], a["padding"], a["dilation"], a["groups"])
        out = _conv(t[0], w, *conv)[0] + _conv(x, t[1], *conv)[0]
        if len(t) == 3:
            out = out + t[2].reshape(1, -1, 1, 1)
        return out

    def onnx(ctx, ins, node):
        a = node.attrs
        w = node.inputs[1].shape
        (ph, pw) = a["padding"]
        return ctx.node(
            "Conv", ins, kernel_shape=[w[2], w[3]], strides=list(a["stride"]),
            pads=[ph, pw, ph, pw], dilations=list(a["dilation"]), group=a["groups"],
        )  # fmt: skip


def _tiled_window_grad(g, arg, kh, kw, x_shape):
    """Max-pool gradient when windows tile the input (stride == kernel): kh*kw masked copies."""
    n, c, ho, wo = g.shape
    tiles = np.zeros((n, c, ho, kh, wo, kw), dtype=g.dtype)
    for k in range(kh * kw):
        np.copyto(tiles[:, :, :, k // kw, :, k % kw], g, where=arg == k)
    tiles = tiles.reshape(n, c, ho * kh, wo * kw)
    if tiles.shape == tuple(x_shape):
        return tiles
    gx = np.zeros(x_shape, dtype=g.dtype)
    gx[:, :, : ho * kh, : wo * kw] = tiles
    return gx


def _pool_parts(x, attrs, fill):
    """The kh*kw strided (N, C, Ho, Wo) views, one per kernel offset, of the padded input."""
    kh, kw = attrs["kernel_size"]
    stride, padding = attrs["stride"], attrs["padding"]
    ho = _out_size(x.shape[2], kh, stride[0], padding[0])
    wo = _out_size(x.shape[3], kw, stride[1], padding[1])
    win = _windows(_pad2d(x, padding, fill), kh, kw, stride, (1, 1), ho, wo)
    return [win[..., i, j] for i in range(kh) for j in range(kw)]


def _lowest(dtype):
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _first_argmax(node):
    """Kernel offset of the first maximum in each window (torch's choice on ties)."""
    x = node.xs[0]
    parts = _pool_parts(x, node.attrs, _lowest(x.dtype))
    arg = np.full(node.out.shape, len(parts) - 1, dtype=np.int16)
    for k in range(len(parts) - 2, -1, -1):
        np.copyto(arg, k, where=parts[k] == node.out)
    return arg


@register
class MaxPool2d(Primitive):
    """Max over kh*kw windows, by whole-array maxima of the kernel-offset views (a reduction
    over tiny window rows is far slower); which element won is found only for gradients."""

    name = "max_pool2d"

    def forward(x, kernel_size, stride, padding=(0, 0)):
        attrs = {"kernel_size": kernel_size, "stride": stride, "padding": padding}
        parts = _pool_parts(x, attrs, _lowest(x.dtype))
        out = parts[0].copy()
        for part in parts[1:]:
            np.maximum(out, part, out=out)
        return out

    def vjp(g, node):
        a = node.attrs
        arg = _first_argmax(node)
        kh, kw = a["kernel_size"]
        if a["stride"] == (kh, kw) and a["padding"] == (0, 0):
            return (_tiled_window_grad(g, arg, kh, kw, node.xs[0].shape),)
        zero = np.zeros((), g.dtype)
        parts = (
            ((i, j), np.where(arg == i * kw + j, g, zero)) for i in range(kh) for j in range(kw)
        )
        return (_scatter_windows(parts, node.xs[0].shape, a["padding"], a["stride"], (1, 1),
                                 g.dtype),)  # fmt: skip

    def jvp(t, node):
        arg = _first_argmax(node)
        out = np.zeros(node.out.shape, dtype=t[0].dtype)
        for k, part in enumerate(_pool_parts(t[0], node.attrs, 0)):
            np.copyto(out, part, where=arg == k)
        return out

    def onnx(ctx, ins, node):
        a = node.attrs
        ph, pw = a["padding"]
        return ctx.node("MaxPool", ins, kernel_shape=list(a["kernel_size"]),
                        strides=list(a["stride"]), pads=[ph, pw, ph, pw])  # fmt: skip


def _avg_pool(x, kernel_size, stride, padding, count_include_pad):
    kh, kw = kernel_size
    ho = _out_size(x.shape[2], kh, stride[0], padding[0])
    wo = _out_size(x.shape[3], kw, stride[1], padding[1])
    win = _windows(_pad2d(x, padding), kh, kw, stride, (1, 1), ho, wo)
    return win.sum(axis=(4, 5)) / _avg_divisor(x.shape, kernel_size, stride, padding,
                                               count_include_pad, x.dtype)  # fmt: skip


def _avg_divisor(shape, kernel_size, stride, padding, count_include_pad, dtype):
    kh, kw = kernel_size
    if count_include_pad or padding == (0, 0):
        return np.asarray(kh * kw, dtype)
    ones = np.ones((1, 1) + tuple(shape[2:]), dtype)
    ho = _out_size(shape[2], kh, stride[0], padding[0])
    wo = _out_size(shape[3], kw, stride[1], padding[1])
    return _windows(_pad2d(ones, padding), kh, kw, stride, (1, 1), ho, wo).sum(axis=(4, 5))


@register
class AvgPool2d(Primitive):
    name = "avg_pool2d"

    def forward(x, kernel_size, stride, padding=(0, 0), count_include_pad=True):
        return _avg_pool(x, kernel_size, stride, padding, count_include_pad)

    def vjp(g, node):
        a = node.attrs
        kh, kw = a["kernel_size"]
        div = _avg_divisor(node.xs[0].shape, a["kernel_size"], a["stride"], a["padding"],
                           a["count_include_pad"], g.dtype)  # fmt: skip
        share = g / div
        parts = (((i, j), share) for i in range(kh) for j in range(kw))
        return (_scatter_windows(parts, node.xs[0].shape, a["padding"], a["stride"], (1, 1),
                                 g.dtype),)  # fmt: skip

    def jvp(t, node):
        a = node.attrs
        return _avg_pool(t[0], a["kernel_size"], a["stride"], a["padding"],
                         a["count_include_pad"])  # fmt: skip

    def onnx(ctx, ins, node):
        a = node.attrs
        ph, pw = a["padding"]
        return ctx.node("AveragePool", ins, kernel_shape=list(a["kernel_size"]),
                        strides=list(a["stride"]), pads=[ph, pw, ph, pw],
                        count_include_pad=int(a["count_include_pad"]))  # fmt: skip


def _adaptive_bins(n_in, n_out):
    """torch's bins: [floor(i*in/out), ceil((i+1)*in/out))."""
    return [((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]


def _adaptive_avg(x, output_size):
    oh, ow = output_size
    rows, cols = _adaptive_bins(x.shape[2], oh), _adaptive_bins(x.shape[3], ow)
    out = np.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return out


@register
class AdaptiveAvgPool2d(Primitive):
    name = "adaptive_avg_pool2d"

    def forward(x, output_size):
        return _adaptive_avg(x, output_size)

    def vjp(g, node):
        x = node.xs[0]
        oh, ow = node.attrs["output_size"]
        gx = np.zeros(x.shape, dtype=g.dtype)
        rows, cols = _adaptive_bins(x.shape[2], oh), _adaptive_bins(x.shape[3], ow)
        for i, (r0, r1) in enumerate(rows):
            for j, (c0, c1) in enumerate(cols):
                area = (r1 - r0) * (c1 - c0)
                gx[:, :, r0:r1, c0:c1] += (g[:, :, i, j] / area)[:, :, None, None]
        return (gx,)

    def jvp(t, node):
        return _adaptive_avg(t[0], node.attrs["output_size"])

    def onnx(ctx, ins, node):
        h, w = node.inputs[0].shape[2:]
        oh, ow = node.attrs["output_size"]
        if (oh, ow) == (1, 1):
            return ctx.node("GlobalAveragePool", ins)
        if h % oh or w % ow:
            raise NotImplementedError(
                f"adaptive_avg_pool2d lowering needs the input {h}x{w} to divide into {oh}x{ow}"
            )
        k = [h // oh, w // ow]
        return ctx.node("AveragePool", ins, kernel_shape=k, strides=k)


# normalisation and embedding --------------------------------------------------------------


def _bn_shape(x):
    return (1, -1) + (1,) * (x.ndim - 2)


@register
class BatchNorm(Primitive):
    """Batch normalisation over every axis but 1.

    Inputs (x, weight, bias, running_mean, running_var). In training it normalises with the
    batch statistics (biased variance) and saves them as (xhat, invstd, mean, var) so the
    functional wrapper can update the running statistics; in eval it uses the running ones.
    """

    name = "batch_norm"
    saves = True

    def forward(x, weight, bias, running_mean, running_var, training=True, eps=1e-5):
        shape = _bn_shape(x)
        axes = (0,) + tuple(range(2, x.ndim))
        if training:
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
        else:
            mean, var = running_mean, running_var
        invstd = (1.0 / np.sqrt(var + eps)).astype(x.dtype, copy=False)
        xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
        out = xhat * weight.reshape(shape) + bias.reshape(shape)
        return out, (xhat, invstd, mean, var)

    def vjp(g, node):
        x, weight = node.xs[0], node.xs[1]
        xhat, invstd, _, _ = node.saved
        shape = _bn_shape(x)
        axes = (0,) + tuple(range(2, x.ndim))
        gw = (g * xhat).sum(axis=axes) if node.needs[1] or node.attrs["training"] else None
        gb = g.sum(axis=axes) if node.needs[2] or node.attrs["training"] else None
        gx = None
        if node.needs[0]:
            scale = (weight * invstd).reshape(shape)
            if node.attrs["training"]:
                m = x.size // x.shape[1]
                gx = scale * (g - gb.reshape(shape) / m - xhat * (gw.reshape(shape) / m))
            else:
                gx = g * scale
        return (gx, gw if node.needs[1] else None, gb if node.needs[2] else None, None, None)

    def jvp(t, node):
        x, weight = node.xs[0], node.xs[1]
        xhat, invstd, _, _ = node.saved
        shape = _bn_shape(x)
        axes = (0,) + tuple(range(2, x.ndim))
        tx = t[0]
        if node.attrs["training"]:
            tc = tx - tx.mean(axis=axes, keepdims=True)
            txhat = invstd.reshape(shape) * (tc - xhat * (xhat * tc).mean(axis=axes, keepdims=True))
        else:
            txhat = tx * invstd.reshape(shape)
        return txhat * weight.reshape(shape) + xhat * t[1].reshape(shape) + t[2].reshape(shape)

    def onnx(ctx, ins, node):
        if node.attrs["training"]:
            raise NotImplementedError("batch_norm in training mode: export the model in eval()")
        return ctx.node("BatchNormalization", ins, epsilon=float(node.attrs["eps"]))


@register
class Embedding(Primitive):
    """Rows of `weight` (V, D) picked by integer `indices` (any shape)."""

    name = "embedding"

    def forward(weight, indices):
        if indices.dtype.kind not in "iu":
            raise TypeError(f"embedding indices must be integers, got {indices.dtype}")
        return weight[indices]

    def vjp(g, node):
        weight, indices = node.xs
        gw = np.zeros_like(weight, dtype=g.dtype)
        np.add.at(gw, indices.reshape(-1), g.reshape(-1, weight.shape[1]))
        return (gw, None)

    def jvp(t, node):
        return t[0][node.xs[1]]

    def onnx(ctx, ins, node):
        return ctx.node("Gather", ins, axis=0)
