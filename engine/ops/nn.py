"""Neural-network primitives fused for speed: softmax family, nll_loss, conv2d, pooling,
batch_norm and embedding, with the linear primitives their derivatives are made of (im2col and
col2im, the max-pool window selection and its adjoint)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from engine.ops import Linear, Multilinear, Primitive, register
from engine.ops.reduce import Sum
from engine.ops.shape import ScatterAdd, Transpose
from engine.tensor import Tensor, apply

# softmax family ---------------------------------------------------------------------------


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


@register
class Softmax(Primitive):
    name = "softmax"
    self_adjoint = True  # J = diag(y) - y y^T is symmetric

    def forward(x, axis=-1):
        return _softmax(x, axis)

    def jvp(t, node):
        y = node.output
        yt = y * t[0]
        return yt - y * yt.sum(axis=node.attrs["axis"], keepdims=True)

    def onnx(ctx, ins, node):
        return ctx.node("Softmax", ins, axis=node.attrs["axis"])


@register
class LogSoftmax(Primitive):
    name = "log_softmax"

    def forward(x, axis=-1):
        shifted = x - x.max(axis=axis, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    def jvp(t, node):  # J t = t - <softmax, t>: J = I - 1 softmax^T
        softmax = node.output.exp()
        return t[0] - apply(Sum, [softmax * t[0]], axes=(node.attrs["axis"],), keepdims=True)

    def transpose(g, node):  # J^T g = g - softmax <1, g> (stated for speed; checked adjoint)
        softmax = node.output.exp()
        return (g - softmax * apply(Sum, [g], axes=(node.attrs["axis"],), keepdims=True),)

    def onnx(ctx, ins, node):
        return ctx.node("LogSoftmax", ins, axis=node.attrs["axis"])


def _class_last(a):
    """(N, C, d1, ...) -> (M, C) view/copy with the class axis last."""
    if a.ndim == 2:
        return a
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


@register
class NLLLoss(Linear):
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

    def transpose(g, node):  # -w (scaled by the reduction) at each row's target class
        logp = node.xs[0]
        safe, w = node.saved
        reduction = node.attrs["reduction"]
        if reduction == "none":
            coef = g.reshape(-1) * Tensor._wrap(-w)
        elif reduction == "sum":
            coef = g * Tensor._wrap(-w)
        else:
            coef = g * Tensor._wrap(-w / w.sum())
        rows = safe.shape[0]
        grad = apply(ScatterAdd, [coef], shape=(rows, logp.shape[1]),
                     index=(np.arange(rows), safe), unique=True)  # fmt: skip
        if logp.ndim > 2:
            rest = (logp.shape[0],) + logp.shape[2:] + (logp.shape[1],)
            perm = (0, logp.ndim - 1, *range(1, logp.ndim - 1))
            grad = apply(Transpose, [grad.reshape(rest)], perm=perm)
        return (grad, None)

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


def _empty_as(shape, like, dtype):
    """An uninitialised array of `shape` laid out in memory in `like`'s axis order (so a
    gradient of an NHWC-backed activation is NHWC-backed too)."""
    if like.flags.c_contiguous:
        return np.empty(shape, dtype=dtype)
    order = sorted(range(like.ndim), key=lambda a: -like.strides[a])
    buffer = np.empty([shape[a] for a in order], dtype=dtype)
    return buffer.transpose(np.argsort(order))


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
    # (N, O, Ho, Wo) as a view of the GEMM's NHWC rows: no copy here, the next im2col's NHWC
    # copy is a straight one, and element-wise ops and the pools keep the layout
    return out.reshape(n, ho, wo, o).transpose(0, 3, 1, 2), all_cols


def _col2im(cols, x_shape, kernel, stride, padding, dilation):
    """Columns (N*Ho*Wo, kh*kw*C) added back into (N, C, H, W): kh*kw strided slice-adds of
    contiguous channel runs into a padded NHWC buffer."""
    n, c, h, w = x_shape
    kh, kw = kernel
    ph, pw = padding
    ho = _out_size(h, kh, stride[0], ph, dilation[0])
    wo = _out_size(w, kw, stride[1], pw, dilation[1])
    parts = cols.reshape(n, ho, wo, kh, kw, c)
    dx = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            rows = slice(r0, r0 + stride[0] * (ho - 1) + 1, stride[0])
            cols_ = slice(c0, c0 + stride[1] * (wo - 1) + 1, stride[1])
            dx[:, rows, cols_] += parts[:, :, :, i, j]
    return dx[:, ph : ph + h, pw : pw + w].transpose(0, 3, 1, 2)


def _window_attrs(a) -> dict:
    return {k: a[k] for k in ("kernel", "stride", "padding", "dilation")}


def _onehot_kernel(c, kh, kw, dtype):
    """(C*kh*kw, 1, kh, kw) weights picking each window element: channel c*kh*kw + i*kw + j
    of a grouped convolution holds x[c] at offset (i, j)."""
    eye = np.eye(kh * kw, dtype=dtype).reshape(kh * kw, 1, kh, kw)
    return np.tile(eye, (c, 1, 1, 1))


@register
class Im2Col(Linear):
    """(N, C, H, W) -> the columns (N*Ho*Wo, kh*kw*C) one GEMM turns into a convolution.

    `cache` is the same columns computed earlier (conv2d saves them): forward returns it as is.
    """

    name = "im2col"
    tangent_attrs = {"cache": None}

    def forward(x, kernel, stride, padding, dilation, cache=None):
        if cache is not None:
            return cache
        return _im2col(x, *kernel, stride, padding, dilation)[0]

    def transpose(g, node):
        attrs = _window_attrs(node.attrs)
        return (apply(Col2Im, [g], x_shape=node.xs[0].shape, **attrs),)

    def onnx(ctx, ins, node):
        n, c, h, w = node.inputs[0].shape
        a = node.attrs
        (kh, kw), (ph, pw) = a["kernel"], a["padding"]
        ho, wo = _out_size(h, kh, a["stride"][0], ph, a["dilation"][0]), _out_size(
            w, kw, a["stride"][1], pw, a["dilation"][1])  # fmt: skip
        dt = node.inputs[0].dtype
        patches = ctx.node(
            "Conv", [ins[0], ctx.const(_onehot_kernel(c, kh, kw, dt), "im2col_kernel")],
            kernel_shape=[kh, kw], strides=list(a["stride"]), pads=[ph, pw, ph, pw],
            dilations=list(a["dilation"]), group=c,
        )  # fmt: skip
        shaped = ctx.node("Reshape", [patches, ctx.const(np.array([0, c, kh * kw, ho * wo]),
                                                         "shape")])  # fmt: skip
        rows = ctx.node("Transpose", [shaped], perm=[0, 3, 2, 1])
        return ctx.node("Reshape", [rows, ctx.const(np.array([-1, kh * kw * c]), "shape")])


@register
class Col2Im(Linear):
    """im2col's adjoint: columns (N*Ho*Wo, kh*kw*C) summed back into an (N, C, H, W) image."""

    name = "col2im"

    def forward(cols, x_shape, kernel, stride, padding, dilation):
        return _col2im(cols, x_shape, kernel, stride, padding, dilation)

    def transpose(g, node):
        return (apply(Im2Col, [g], **_window_attrs(node.attrs)),)

    def onnx(ctx, ins, node):
        n, c, h, w = node.attrs["x_shape"]
        a = node.attrs
        (kh, kw), (ph, pw) = a["kernel"], a["padding"]
        ho, wo = _out_size(h, kh, a["stride"][0], ph, a["dilation"][0]), _out_size(
            w, kw, a["stride"][1], pw, a["dilation"][1])  # fmt: skip
        dt = node.inputs[0].dtype
        rows = ctx.node("Reshape", [ins[0], ctx.const(np.array([-1, ho * wo, kh * kw, c]),
                                                      "shape")])  # fmt: skip
        planes = ctx.node("Transpose", [rows], perm=[0, 3, 2, 1])
        planes = ctx.node("Reshape", [planes, ctx.const(np.array([0, c * kh * kw, ho, wo]),
                                                        "shape")])  # fmt: skip
        full_h = (ho - 1) * a["stride"][0] + a["dilation"][0] * (kh - 1) + 1 - 2 * ph
        full_w = (wo - 1) * a["stride"][1] + a["dilation"][1] * (kw - 1) + 1 - 2 * pw
        return ctx.node(
            "ConvTranspose", [planes, ctx.const(_onehot_kernel(c, kh, kw, dt), "col2im_kernel")],
            kernel_shape=[kh, kw], strides=list(a["stride"]), pads=[ph, pw, ph, pw],
            dilations=list(a["dilation"]), group=c, output_padding=[h - full_h, w - full_w],
        )  # fmt: skip


@register
class Conv2d(Multilinear):
    """2-D convolution (N, C, H, W) x (O, C/groups, kh, kw) [+ bias (O,)]: im2col + one GEMM.

    Bilinear in (x, w): d conv = conv(dx, w) + conv(x, dw); the adjoints are col2im of g times
    the weights (for x) and g times im2col(x) (for w), per group.
    """

    name = "conv2d"
    saves = True
    bias_axis = 1

    def forward(x, w, *bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
        if x.ndim != 4 or w.ndim != 4:
            raise ValueError(f"conv2d expects 4-D input and weight, got {x.shape} and {w.shape}")
        if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
            raise ValueError(
                f"conv2d: input has {x.shape[1]} channels, weight expects "
                f"{w.shape[1] * groups} (C/groups={w.shape[1]}, groups={groups})"
            )
        return _conv(x, w, stride, padding, dilation, groups, bias[0] if bias else None)

    def transpose(g, node):
        x, w = node.inputs[0], node.inputs[1]
        a = node.attrs
        groups = a["groups"]
        o, cg, kh, kw = w.shape
        og = o // groups
        n, _, h, wd = x.shape
        window = {"kernel": (kh, kw), "stride": a["stride"], "padding": a["padding"],
                  "dilation": a["dilation"]}  # fmt: skip
        rows = g.permute(0, 2, 3, 1).reshape(-1, o)  # (N*Ho*Wo, O)
        gxs, gws = [], []
        for gi in range(groups):
            go = rows if groups == 1 else rows[:, gi * og : (gi + 1) * og]
            wg = w if groups == 1 else w[gi * og : (gi + 1) * og]
            if node.needs[1]:
                xg = x if groups == 1 else x[:, gi * cg : (gi + 1) * cg]
                cols = apply(Im2Col, [xg], cache=node.saved[gi] if node.saved else None,
                             **window)  # fmt: skip
                gws.append((go.T @ cols).reshape(og, kh, kw, cg).permute(0, 3, 1, 2))
            if node.needs[0]:
                dcols = go @ wg.permute(0, 2, 3, 1).reshape(og, -1)
                gxs.append(apply(Col2Im, [dcols], x_shape=(n, cg, h, wd), **window))
        gx = (gxs[0] if groups == 1 else _cat(gxs, 1)) if gxs else None
        gw = (gws[0] if groups == 1 else _cat(gws, 0)) if gws else None
        return gx, gw

    def onnx(ctx, ins, node):
        a = node.attrs
        w = node.inputs[1].shape
        (ph, pw) = a["padding"]
        return ctx.node(
            "Conv", ins, kernel_shape=[w[2], w[3]], strides=list(a["stride"]),
            pads=[ph, pw, ph, pw], dilations=list(a["dilation"]), group=a["groups"],
        )  # fmt: skip


def _cat(parts, axis):
    from engine.ops.shape import Concat

    return apply(Concat, parts, axis=axis)


def _tiled_window_grad(g, arg, kh, kw, x_shape):
    """Max-pool gradient when windows tile the input (stride == kernel, no padding): each
    kernel offset's values are picked from g contiguously (where arg == k), then written
    through one strided view; every input position is written once."""
    n, c, ho, wo = g.shape
    gx = _empty_as(x_shape, g, g.dtype)
    if x_shape[2] != ho * kh or x_shape[3] != wo * kw:
        gx[...] = 0  # the cropped border gets no gradient
    won = np.empty(arg.shape, dtype=bool)
    for k in range(kh * kw):
        np.equal(arg, k, out=won)  # g times a mask: far faster than np.where with a scalar
        np.multiply(g, won, out=gx[:, :, k // kw : ho * kh : kh, k % kw : wo * kw : kw])
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
    """Kernel offset of the first maximum in each window (torch's choice on ties), computed
    once per node and kept in its `saved` list (shared by every use of its derivative).

    The kernel-offset views are strided reads, which numpy does ten times slower than
    contiguous ones, so each is copied out once before the comparisons."""
    cache = node.saved
    if cache:
        return cache[0]
    x = node.xs[0]
    parts = _pool_parts(x, node.attrs, _lowest(x.dtype))
    # arg = sum over k of "no maximum among offsets 0..k": counts the misses before the first hit
    arg = np.zeros(node.out.shape, dtype=np.uint8 if len(parts) < 256 else np.int16)
    searching = np.ones(node.out.shape, dtype=bool)
    for part in parts[:-1]:
        np.logical_and(searching, part != node.out, out=searching)
        arg += searching
    cache.append(arg)
    return arg


@register
class MaxPool2d(Primitive):
    """Max over kh*kw windows, by whole-array maxima of the kernel-offset views (a reduction
    over tiny window rows is far slower); which element won is found only for gradients."""

    name = "max_pool2d"
    saves = True  # an empty list: the derivative keeps the winners' offsets in it

    def forward(x, kernel_size, stride, padding=(0, 0)):
        attrs = {"kernel_size": kernel_size, "stride": stride, "padding": padding}
        parts = _pool_parts(x, attrs, _lowest(x.dtype))
        out = np.copy(parts[0], order="K")  # the input's layout (NHWC-backed after a conv)
        for part in parts[1:]:
            np.maximum(out, part, out=out)
        return out, []

    def jvp(t, node):  # the tangent of each window's (first) winner
        return apply(MaxPoolSelect, [t[0]], arg=_first_argmax(node), **_pool_attrs(node.attrs))

    def transpose(g, node):  # the select's adjoint (stated for speed; checked adjoint)
        return (apply(MaxPoolScatter, [g], arg=_first_argmax(node), x_shape=node.xs[0].shape,
                      **_pool_attrs(node.attrs)),)  # fmt: skip

    def onnx(ctx, ins, node):
        a = node.attrs
        ph, pw = a["padding"]
        return ctx.node("MaxPool", ins, kernel_shape=list(a["kernel_size"]),
                        strides=list(a["stride"]), pads=[ph, pw, ph, pw])  # fmt: skip


def _pool_attrs(a) -> dict:
    return {k: a[k] for k in ("kernel_size", "stride", "padding")}


def _derivative_only(name: str) -> NotImplementedError:
    return NotImplementedError(
        f"{name} has no ONNX lowering: it appears only in derivatives of max_pool2d, with the "
        "winning window positions of one input baked into its attributes"
    )


@register
class MaxPoolSelect(Linear):
    """The element at kernel offset `arg` of each max-pool window: max_pool2d's derivative."""

    name = "max_pool2d_select"
    derivative_only = True

    def forward(x, arg, kernel_size, stride, padding):
        if x.ndim and not any(x.strides):  # a broadcast constant: every pick is that value
            return np.broadcast_to(x.reshape(-1)[:1].reshape(()), arg.shape)
        out = np.zeros(arg.shape, dtype=x.dtype)
        attrs = {"kernel_size": kernel_size, "stride": stride, "padding": padding}
        for k, part in enumerate(_pool_parts(x, attrs, 0)):
            np.copyto(out, part, where=arg == k)
        return out

    def transpose(g, node):
        return (apply(MaxPoolScatter, [g], arg=node.attrs["arg"], x_shape=node.xs[0].shape,
                      **_pool_attrs(node.attrs)),)  # fmt: skip

    def onnx(ctx, ins, node):
        raise _derivative_only("max_pool2d_select")


@register
class MaxPoolScatter(Linear):
    """max_pool2d_select's adjoint: each window's value added at its kernel offset `arg`."""

    name = "max_pool2d_scatter"
    derivative_only = True

    def forward(g, arg, kernel_size, stride, padding, x_shape):
        kh, kw = kernel_size
        if stride == (kh, kw) and padding == (0, 0):
            return _tiled_window_grad(g, arg, kh, kw, x_shape)
        parts = (((i, j), g * (arg == i * kw + j)) for i in range(kh) for j in range(kw))
        return _scatter_windows(parts, x_shape, padding, stride, (1, 1), g.dtype)

    def transpose(g, node):
        return (apply(MaxPoolSelect, [g], arg=node.attrs["arg"], **_pool_attrs(node.attrs)),)

    def onnx(ctx, ins, node):
        raise _derivative_only("max_pool2d_scatter")


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
class AvgPool2d(Linear):
    name = "avg_pool2d"

    def forward(x, kernel_size, stride, padding=(0, 0), count_include_pad=True):
        return _avg_pool(x, kernel_size, stride, padding, count_include_pad)

    def transpose(g, node):  # each window's share, spread over the window by col2im
        a = node.attrs
        x_shape = node.xs[0].shape
        (kh, kw), c = a["kernel_size"], x_shape[1]
        div = _avg_divisor(x_shape, a["kernel_size"], a["stride"], a["padding"],
                           a["count_include_pad"], g.dtype)  # fmt: skip
        share = (g * Tensor._wrap((1 / div).astype(g.dtype))).permute(0, 2, 3, 1)
        rows = share.reshape(-1, 1, c).broadcast_to((share.data.size // c, kh * kw, c))
        cols = rows.reshape(-1, kh * kw * c)
        return (apply(Col2Im, [cols], x_shape=x_shape, kernel=(kh, kw), stride=a["stride"],
                      padding=a["padding"], dilation=(1, 1)),)  # fmt: skip

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


def _averaging_matrix(n_in, n_out, dtype):
    """(n_out, n_in): row i averages bin i, so pooling is A_h @ x @ A_w^T per plane."""
    a = np.zeros((n_out, n_in), dtype=dtype)
    for i, (r0, r1) in enumerate(_adaptive_bins(n_in, n_out)):
        a[i, r0:r1] = 1.0 / (r1 - r0)
    return a


@register
class AdaptiveAvgPool2d(Linear):
    """Average over torch's bins; bins factor into rows and columns, so the adjoint is
    A_h^T @ g @ A_w, two GEMMs."""

    name = "adaptive_avg_pool2d"

    def forward(x, output_size):
        return _adaptive_avg(x, output_size)

    def transpose(g, node):
        n, c, h, w = node.xs[0].shape
        oh, ow = node.attrs["output_size"]
        a_h = Tensor._wrap(_averaging_matrix(h, oh, g.dtype))
        a_w = Tensor._wrap(_averaging_matrix(w, ow, g.dtype))
        wide = g.reshape(n * c * oh, ow) @ a_w  # (N*C*oh, W)
        tall = wide.reshape(n * c, oh, w).transpose(1, 2).reshape(n * c * w, oh) @ a_h
        return (tall.reshape(n, c, w, h).transpose(2, 3),)

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


def _plus(total, term):
    return term if total is None else total + term


def _bn_normalised(node) -> tuple[Tensor, Tensor]:
    """(xhat, invstd broadcastable over x): the saved arrays as constants for a first
    derivative, recomputed in engine ops when the derivative is differentiated again."""
    x = node.inputs[0]
    shape = _bn_shape(x)
    if not node.higher:
        xhat, invstd, _, _ = node.saved
        return Tensor._wrap(xhat), Tensor._wrap(invstd.reshape(shape))
    eps = node.attrs["eps"]
    if node.attrs["training"]:
        axes = (0,) + tuple(range(2, x.ndim))
        centred = x - x.mean(axis=axes, keepdims=True)
        invstd = ((centred * centred).mean(axis=axes, keepdims=True) + eps) ** -0.5
    else:
        centred = x - node.inputs[3].reshape(shape)
        invstd = (node.inputs[4].reshape(shape) + eps) ** -0.5
    return centred * invstd, invstd


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

    def jvp(t, node):
        # training: d xhat = invstd * (dc - xhat * mean(xhat * dc)) with dc = dx - mean(dx);
        # eval: d xhat = invstd * dx. Then d out = d xhat * w + xhat * dw + db (the running
        # statistics are buffers: no derivative flows into them).
        tx, tw, tb = t[0], t[1], t[2]
        x, weight = node.inputs[0], node.inputs[1]
        shape, axes = _bn_shape(x), (0,) + tuple(range(2, x.ndim))
        xhat, invstd = _bn_normalised(node)
        total = None
        if tx is not None:
            if node.attrs["training"]:
                tc = tx - tx.mean(axis=axes, keepdims=True)
                tx = tc - xhat * (xhat * tc).mean(axis=axes, keepdims=True)
            total = tx * (invstd * weight.reshape(shape))
        if tw is not None:
            total = _plus(total, xhat * tw.reshape(shape))
        if tb is not None:
            total = _plus(total, tb.reshape(shape))
        return total

    def onnx(ctx, ins, node):
        if node.attrs["training"]:
            raise NotImplementedError("batch_norm in training mode: export the model in eval()")
        return ctx.node("BatchNormalization", ins, epsilon=float(node.attrs["eps"]))


@register
class Embedding(Linear):
    """Rows of `weight` (V, D) picked by integer `indices` (any shape)."""

    name = "embedding"

    def forward(weight, indices):
        if indices.dtype.kind not in "iu":
            raise TypeError(f"embedding indices must be integers, got {indices.dtype}")
        return weight[indices]

    def transpose(g, node):  # each row's cotangent added back at its index
        weight, indices = node.xs
        return (apply(ScatterAdd, [g], shape=weight.shape, index=(indices,)), None)

    def onnx(ctx, ins, node):
        return ctx.node("Gather", ins, axis=0)
