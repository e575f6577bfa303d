"""Triton generalized neighborhood-attention kernels (kernels/neighborhood_*.py) under TRITON_INTERPRET=1 on tiny
shapes: output and every gradient (q, k, v, rpb, bias) against an independent float64 brute force (dense (N, N)
attention with an explicit window mask and gathered bias), plus the torch backend for the forward; border, odd,
dilated, strided, window, grid and uneven-window cases; poisoned outputs; errors; autocast; determinism."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from vitzoo.kernels import _neighborhood_common as common  # noqa: E402
from vitzoo.ops import neighborhood_attention_2d  # noqa: E402
from vitzoo.ops._geometry import axis_windows  # noqa: E402


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every kernel output starts as NaN: an element a kernel fails to write shows up in the comparison."""
    def nan_alloc(shape, device, dtype):
        return torch.full(shape, float("nan"), device=device, dtype=dtype)

    monkeypatch.setattr(common, "alloc", nan_alloc)


def brute_force(q, k, v, kernel, dilation, stride, rpb=None, bias=None, scale=None):
    """Dense float64 attention over all H*W keys with a (N, N) window mask and a (heads, N, N) bias built from
    _geometry's per-axis start/local (no code shared with the reference's gather loops or the kernels)."""
    batch, height, width, heads, dim = q.shape
    kh, kw = kernel
    wy = axis_windows(height, kh, dilation[0], stride[0])
    wx = axis_windows(width, kw, dilation[1], stride[1])
    ys, xs = torch.arange(height), torch.arange(width)
    # slot of key (ky) in query (y)'s window along each axis, or -1
    def slots(win, pos, dil, kern):
        rel = pos[None, :] - win.start[:, None]
        ok = (rel >= 0) & (rel % dil == 0) & (rel // dil < kern)
        return torch.where(ok, rel // dil, -1)

    sy, sx = slots(wy, ys, dilation[0], kh), slots(wx, xs, dilation[1], kw)  # (H, H), (W, W)
    a = sy[:, None, :, None].expand(height, width, height, width).reshape(height * width, -1)
    b = sx[None, :, None, :].expand(height, width, height, width).reshape(height * width, -1)
    mask = (a >= 0) & (b >= 0)  # (N, N)
    ly = wy.local[:, None].expand(height, width).reshape(-1)
    lx = wx.local[None, :].expand(height, width).reshape(-1)
    scale = dim ** -0.5 if scale is None else scale
    logits = torch.einsum("bnhd,bmhd->bhnm", q.reshape(batch, -1, heads, dim), k.reshape(batch, -1, heads, dim))
    logits = logits * scale
    ac, bc = a.clamp_min(0), b.clamp_min(0)
    if rpb is not None:
        logits = logits + rpb[:, ac - ly[:, None] + kh - 1, bc - lx[:, None] + kw - 1]
    if bias is not None:
        logits = logits + bias[:, (ly * kw + lx)[:, None], ac * kw + bc]
    logits = logits.masked_fill(~mask, float("-inf"))
    out = torch.einsum("bhnm,bmhe->bnhe", logits.softmax(-1), v.reshape(batch, -1, heads, v.shape[-1]))
    return out.reshape(batch, height, width, heads, -1)


def _inputs(shape, kernel, v_dim=None, rpb=False, bias=False, dtype=torch.float32, strided=False):
    batch, height, width, heads, dim = shape
    kh, kw = kernel
    if strided:  # q, k, v as views into one packed (B, H, W, 3, heads, d) projection, like a qkv linear
        qkv = torch.randn(batch, height, width, 3, heads, dim, dtype=dtype)
        q, k, v = qkv.unbind(3)
    else:
        q, k = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
        v = torch.randn(batch, height, width, heads, v_dim or dim, dtype=dtype)
    extra = [torch.randn(heads, 2 * kh - 1, 2 * kw - 1) if rpb else None,
             torch.randn(heads, kh * kw, kh * kw) if bias else None]
    return [q, k, v] + extra


def _run(fn, tensors, kernel, dilation, stride, dtype, grad_out):
    leaves = [None if t is None else t.detach().to(dtype).requires_grad_() for t in tensors]
    q, k, v, rpb, bias = leaves
    out = fn(q, k, v, kernel, dilation, stride, rpb, bias)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), [None if t is None else t.grad for t in leaves]


def _triton(q, k, v, kernel, dilation, stride, rpb, bias):
    return neighborhood_attention_2d(q, k, v, kernel, dilation, stride, rpb, bias, backend="triton")


def _check(shape, kernel, dilation, stride, rpb=False, bias=False, dtype=torch.float32, v_dim=None, strided=False,
           tol=None):
    tensors = _inputs(shape, kernel, v_dim, rpb, bias, strided=strided)
    grad_out = torch.randn(*shape[:4], v_dim or shape[-1], dtype=torch.float64)
    ref_out, ref_grads = _run(brute_force, tensors, kernel, dilation, stride, torch.float64, grad_out)
    out, grads = _run(_triton, tensors, kernel, dilation, stride, dtype, grad_out)
    tol = tol or (2e-5 if dtype == torch.float32 else 4e-3)
    assert out.dtype == dtype
    names = ["out", "dq", "dk", "dv", "d_rpb", "d_bias"]
    for name, got, ref in zip(names, [out] + grads, [ref_out] + ref_grads):
        if ref is None:
            assert got is None, name
            continue
        err = float((got.double() - ref).norm() / ref.norm())
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"
    return tensors


# (shape (B, H, W, heads, d), kernel, dilation, stride, rpb, bias)
CASES = {
    "na_odd_borders_rpb": ((2, 9, 11, 1, 16), (3, 3), (1, 1), (1, 1), True, False),
    "even_kernel_dilated_strided": ((1, 9, 11, 1, 16), (2, 4), (2, 1), (1, 2), True, True),
    "dilation3_rect": ((1, 12, 10, 2, 16), (3, 3), (3, 2), (1, 1), True, False),
    "window_stride_eq_kernel": ((2, 8, 8, 1, 32), (4, 4), (1, 1), (4, 4), True, True),
    "maxvit_grid": ((1, 8, 8, 1, 16), (4, 4), (2, 2), (4, 4), True, False),
    "uneven_windows_shifted": ((1, 10, 9, 1, 16), (4, 4), (1, 1), (4, 4), False, True),
    "stride_between": ((1, 9, 7, 1, 16), (3, 3), (1, 2), (2, 3), False, False),
    "uneven_windows_no_bias": ((1, 10, 9, 2, 16), (4, 4), (1, 1), (4, 4), False, False),  # forward: mask block
    "thin_windows_rpb": ((1, 4, 16, 1, 16), (2, 8), (1, 1), (2, 8), True, False),  # 2x8 tile: padded query grid
}


@pytest.mark.parametrize("name", list(CASES))
def test_forward_backward_fp32(name):
    shape, kernel, dilation, stride, rpb, bias = CASES[name]
    _check(shape, kernel, dilation, stride, rpb, bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", list(CASES))
def test_inference_forward_reads_the_logit_block(name, dtype, monkeypatch):
    """No-grad calls read the dense logit block of each tile's class (every border class, dilation group and stride
    of the cases); checked against the float64 brute force."""
    from vitzoo.kernels import neighborhood_fwd as fwd
    from vitzoo.ops._weight_cache import clear_weight_cache

    shape, kernel, dilation, stride, rpb, bias = CASES[name]
    built = []
    real = fwd.tile_logit_block
    monkeypatch.setattr(fwd, "tile_logit_block", lambda *args: built.append(1) or real(*args))
    clear_weight_cache()
    tensors = _inputs(shape, kernel, None, rpb, bias)
    q, k, v, rpb_t, bias_t = tensors
    with torch.no_grad():
        out = _triton(q.to(dtype), k.to(dtype), v.to(dtype), kernel, dilation, stride, rpb_t, bias_t)
    ref = brute_force(q.double(), k.double(), v.double(), kernel, dilation, stride,
                      *(None if t is None else t.double() for t in (rpb_t, bias_t)))
    err = float((out.double() - ref).norm() / ref.norm())
    assert err < (2e-5 if dtype == torch.float32 else 4e-3), err
    assert built, "the no-grad forward did not read the logit block"
    clear_weight_cache()


def test_logit_block_of_another_geometry_is_refused():
    """A block built for another map size or head count would be read out of bounds: a ValueError, not a launch."""
    from vitzoo.kernels.neighborhood_fwd import logit_block, neighborhood_fwd

    q, k, v, rpb, _ = _inputs((1, 13, 11, 2, 16), (3, 3), rpb=True)
    for size, heads in (((9, 11), 2), ((13, 11), 3)):
        block = logit_block(torch.randn(heads, 5, 5), None, (3, 3), (1, 1), (1, 1), size, q.device, q.dtype)
        with pytest.raises(ValueError, match="does not fit this call's geometry"):
            neighborhood_fwd(q, k, v, rpb, None, (3, 3), (1, 1), (1, 1), 0.25, block=block)


def test_fp16_strided_inputs_and_v_dim():
    _check((1, 9, 11, 2, 32), (3, 3), (2, 1), (2, 1), rpb=True, bias=True, dtype=torch.float16, strided=True)
    _check((1, 7, 9, 1, 16), (3, 3), (1, 1), (3, 3), dtype=torch.float16, v_dim=32)


@pytest.mark.parametrize("v_dim, dtype", [(48, torch.float32), (24, torch.float16)])
def test_value_dim_padded_to_power_of_two(v_dim, dtype):
    """Value head dims that are not a power of two (EfficientViT-M0/M1's cascaded heads: key dim 16, d_v 48)
    run padded in registers: the padded lanes must neither leak into dv / out nor be written."""
    _check((1, 8, 8, 1, 16), (4, 4), (1, 1), (4, 4), bias=True, dtype=dtype, v_dim=v_dim)  # windows + dense bias
    _check((1, 7, 9, 1, 16), (3, 3), (2, 1), (1, 1), rpb=True, dtype=dtype, v_dim=v_dim)  # dilated sliding


def test_value_dim_above_kernel_limit_runs_in_chunks():
    """d_v above MAX_V_DIM (EfficientViT-M5: 96) runs as one call per chunk of value channels; output and every
    gradient (q, k summed over the chunks by autograd, bias too) must still be exact."""
    v_dim = common.MAX_V_DIM + 16
    _check((1, 8, 8, 1, 16), (4, 4), (1, 1), (4, 4), bias=True, v_dim=v_dim)
    _check((1, 7, 9, 1, 16), (3, 3), (1, 1), (1, 1), rpb=True, v_dim=v_dim)


@pytest.mark.parametrize("kernel, dilation, stride, size", [
    ((7, 7), (1, 1), (1, 1), (13, 15)),  # hot NAT case
    ((13, 13), (1, 1), (1, 1), (14, 13)),  # largest kernel, odd
    ((8, 6), (2, 1), (3, 6), (17, 9)),  # even kernels, dilation, stride up to kernel
    ((7, 7), (1, 1), (7, 7), (14, 14)),  # 7x7 windows (one window per program)
    ((7, 7), (2, 2), (7, 7), (14, 14)),  # MaxViT grid with 7x7 windows
])
def test_forward_large_kernels(kernel, dilation, stride, size):
    """Forward only (the per-slot dq kernel costs kernel^4 interpreter steps): big kernels, both tilings."""
    shape = (1, *size, 1, 16)
    q, k, v, rpb, _ = _inputs(shape, kernel, rpb=True)
    out = neighborhood_attention_2d(q, k, v, kernel, dilation, stride, rpb, backend="triton")
    ref = brute_force(q.double(), k.double(), v.double(), kernel, dilation, stride, rpb.double())
    torch_out = neighborhood_attention_2d(q, k, v, kernel, dilation, stride, rpb, backend="torch")
    assert float((out.double() - ref).norm() / ref.norm()) < 2e-5
    assert float((torch_out.double() - ref).norm() / ref.norm()) < 2e-5


def _spy_tile(monkeypatch):
    """Record every call of the one-tile backward kernel's launcher."""
    from vitzoo.kernels import tile_attention_bwd as tile

    calls = []
    real = tile.tile_attention_bwd
    monkeypatch.setattr(tile, "tile_attention_bwd", lambda *args, **kw: calls.append(args[9]) or real(*args, **kw))
    return calls


# (shape (B, H, W, heads, d), kernel, dilation, rpb, bias, v_dim): stride == kernel on exactly tiled maps
TILE_CASES = {
    "windows_rpb": ((2, 8, 8, 2, 16), (4, 4), (1, 1), True, False, None),
    "grid_bias_padded_v_dim": ((1, 8, 8, 1, 16), (4, 4), (2, 2), False, True, 24),
    "odd_windows_rpb_bias_dilated": ((1, 6, 8, 3, 32), (3, 4), (2, 1), True, True, None),
    "one_window_no_position_terms": ((2, 4, 4, 1, 16), (4, 4), (1, 1), False, False, None),
    # 48 windows over 32 programs (the CPU's 4 "SMs"): two windows summed per program's bias-gradient partial
    "chunked_windows_rpb": ((3, 16, 16, 1, 16), (4, 4), (1, 1), True, False, None),
    "full_tile_8x8_d64": ((1, 8, 8, 1, 64), (8, 8), (1, 1), True, False, None),
}


@pytest.mark.usefixtures("nan_poisoned_empty")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", list(TILE_CASES))
def test_one_tile_backward_matches_float64(name, dtype, monkeypatch):
    """Windows / grids of at most 64 tokens train through kernels/tile_attention_bwd.py (one pass: dq, dk, dv and
    the rpb / dense-bias gradients); every output against the float64 brute force, unwritten elements NaN."""
    shape, kernel, dilation, rpb, bias, v_dim = TILE_CASES[name]
    calls = _spy_tile(monkeypatch)
    _check(shape, kernel, dilation, kernel, rpb, bias, dtype=dtype, v_dim=v_dim)
    assert len(calls) == 1


@pytest.mark.parametrize("shape, kernel, stride", [
    ((1, 9, 9, 1, 16), (9, 9), (9, 9)),  # 81 tokens: more than one tile
    ((1, 10, 9, 1, 16), (4, 4), (4, 4)),  # windows shifted inward at the borders: not an exact tiling
    ((1, 8, 8, 1, 16), (4, 4), (2, 2)),  # overlapping windows
])
def test_other_windows_take_the_general_kernels(shape, kernel, stride, monkeypatch):
    calls = _spy_tile(monkeypatch)
    _check(shape, kernel, (1, 1), stride, rpb=True)
    assert not calls


@pytest.mark.parametrize("name", ["window_stride_eq_kernel", "maxvit_grid", "thin_windows_rpb"])
def test_general_kernels_on_tileable_windows(name, monkeypatch):
    """With the one-tile backward off (VITZOO_TILE_BACKWARD=0) the same windows train through the general dq and
    dk/dv kernels, which still serve every other geometry."""
    from vitzoo.kernels import tile_attention_bwd as tile

    monkeypatch.setattr(tile, "ENABLED", False)
    calls = _spy_tile(monkeypatch)
    shape, kernel, dilation, stride, rpb, bias = CASES[name]
    _check(shape, kernel, dilation, stride, rpb, bias)
    assert not calls


def test_one_tile_backward_refuses_larger_groups():
    from vitzoo.kernels.tile_attention_bwd import TileGeometry, tile_attention_bwd

    q = torch.randn(1, 9, 9, 1, 16)
    with pytest.raises(ValueError, match="Lq, Lk <= 64"):
        tile_attention_bwd(q, q, q, q, torch.zeros(1, 9, 9, 1), None, q, q, q, TileGeometry.windows((9, 9), (1, 1),
                           (9, 9)), 0.25, False)
    with pytest.raises(ValueError, match="not tiled exactly"):
        TileGeometry.windows((4, 4), (1, 1), (10, 8))


@pytest.mark.parametrize("shape, kernel, stride", [
    ((1, 9, 8, 1, 16), (3, 3), (2, 2)),  # general kernels
    ((3, 16, 16, 1, 16), (4, 4), (4, 4)),  # one-tile backward, two windows per bias-gradient chunk
])
def test_backward_deterministic(shape, kernel, stride):
    tensors = _inputs(shape, kernel, rpb=True, bias=True)
    grad_out = torch.randn(shape, dtype=torch.float64)
    first = _run(_triton, tensors, kernel, (1, 1), stride, torch.float32, grad_out)[1]
    second = _run(_triton, tensors, kernel, (1, 1), stride, torch.float32, grad_out)[1]
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_autocast_casts_to_one_dtype():
    q, k, v, rpb, _ = _inputs((1, 6, 7, 1, 16), (3, 3), rpb=True)
    with torch.autocast("cpu", dtype=torch.float16):
        out = neighborhood_attention_2d(q, k.half(), v, 3, rpb=rpb, backend="triton")
    assert out.dtype == torch.float16
    ref = brute_force(q.double(), k.double(), v.double(), (3, 3), (1, 1), (1, 1), rpb.double())
    assert float((out.double() - ref).norm() / ref.norm()) < 4e-3


def test_fake_tensor_shapes():
    """The custom ops' fake implementations (what torch.compile traces) give the real outputs' shapes, strides and
    dtypes (Inductor asserts strides: a non-contiguous rpb gradient once failed there), the window-logit table
    handed to the backward included (built with an rpb, empty without)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import vitzoo.ops._neighborhood_triton  # noqa: F401  (registers the custom ops)

    sliding = _inputs((1, 9, 10, 2, 16), (7, 7), rpb=True)
    windows = _inputs((1, 8, 8, 2, 16), (4, 4), rpb=True)  # one-tile windows: no table even when training
    for (q, k, v, rpb, _), kernel, pos_on, fixed in (
            (sliding, [7, 7], False, False), (sliding, [7, 7], True, False), (sliding, [7, 7], True, True),
            (windows, [4, 4], True, False)):
        pos = rpb if pos_on else None
        tiled = kernel == [4, 4]
        params = (kernel, [1, 1], kernel if tiled else [1, 1], 0.25, fixed)
        real = torch.ops.vitzoo.neighborhood_attention_2d_fwd(q, k, v, pos, None, *params)
        with FakeTensorMode() as mode:
            fq, fk, fv = (mode.from_tensor(t) for t in (q, k, v))
            fpos = None if pos is None else mode.from_tensor(pos)
            fake = torch.ops.vitzoo.neighborhood_attention_2d_fwd(fq, fk, fv, fpos, None, *params)
            grads = torch.ops.vitzoo.neighborhood_attention_2d_bwd(fq, fq, fk, fv, fake[0], fake[1], fpos, None,
                                                                   fake[2], *params[:4])
        real_grads = torch.ops.vitzoo.neighborhood_attention_2d_bwd(q, q, k, v, real[0], real[1], pos, None,
                                                                    real[2], *params[:4])
        layout = lambda tensors: [(t.shape, t.stride(), t.dtype) for t in tensors]  # noqa: E731
        assert layout(fake) == layout(real)
        assert layout(grads) == layout(real_grads)
        assert (real[2].numel() > 0) == (pos is not None and not fixed and not tiled)
        assert [g.shape for g in grads[:3]] == [q.shape, k.shape, v.shape]
        assert grads[3].shape == (rpb.shape if pos is not None else (0,))


def test_torch_compile_fullgraph_matches_eager():
    """torch.compile traces the op (fake impl + registered autograd) without graph breaks; grads match eager."""
    q, k, v, rpb, _ = _inputs((1, 6, 7, 1, 16), (3, 3), rpb=True)
    leaves = [t.requires_grad_() for t in (q, k, v, rpb)]

    def loss(q, k, v, rpb):
        return (neighborhood_attention_2d(q, k, v, 3, rpb=rpb, backend="triton") ** 2).sum()

    torch.compile(loss, backend="aot_eager", fullgraph=True)(*leaves).backward()
    compiled = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    loss(*leaves).backward()
    for a, t in zip(compiled, leaves):
        torch.testing.assert_close(a, t.grad)


@pytest.mark.parametrize("q_shape, v_dim, dtype, match", [
    ((1, 8, 8, 1, 8), 8, torch.float32, "head_dim"),
    ((1, 8, 8, 1, 48), 48, torch.float32, "head_dim"),
    ((1, 8, 8, 1, 16), 16, torch.float64, "dtype"),
])
def test_unsupported_calls_raise(q_shape, v_dim, dtype, match):
    q = torch.randn(q_shape, dtype=dtype)
    v = torch.randn(*q_shape[:4], v_dim, dtype=dtype)
    with pytest.raises(ValueError, match=match):
        neighborhood_attention_2d(q, q, v, 3, backend="triton")
    # "auto" on CPU tensors never picks Triton; it must still give the torch result without raising
    out = neighborhood_attention_2d(q, q, v, 3, backend="auto")
    assert out.shape == (*q_shape[:4], v_dim)


@pytest.mark.parametrize("kernel, stride, tile, glen", [
    ((7, 7), (1, 1), (8, 8), (13, 23)),  # NAT: tiles at both borders and a short last tile
    ((13, 13), (1, 1), (8, 8), (14, 21)),
    ((7, 7), (7, 7), (7, 7), (14, 21)),  # windows
    ((3, 5), (2, 5), (8, 8), (9, 17)),  # stride between 1 and kernel: start jumps inside a tile
    ((8, 6), (3, 6), (8, 8), (17, 9)),
    ((3, 3), (3, 3), (3, 3), (7, 9)),  # tiny windows: the key block is padded to >= 16 keys
])
def test_window_table_covers_every_lookup(kernel, stride, tile, glen):
    """Every table index the forward and dQ kernels can form -- any tile, any query of it (padding ones too; the dQ
    kernel lays its queries out on a padded power-of-two grid), any key of any KEY_ROWS x KEY_W block of the row
    loop, for every autotune config -- and every one the dK/dV kernel can form (any key tile, any query of its
    inverse neighborhood) lies inside the table, and the entry read is -inf exactly when the key is outside the
    query's window (no kernel has another mask)."""
    from vitzoo.kernels import neighborhood_bwd_dq as dq
    from vitzoo.kernels import neighborhood_fwd as fwd
    from vitzoo.kernels._neighborhood_table import table_geometry, window_logit_table

    geom = table_geometry(kernel, stride, tile)
    table = window_logit_table(None, None, kernel, geom, torch.device("cpu"))[0]
    size = table.numel()
    (kh, kw), (sh, sw), (tyl, txl), (gly, glx) = kernel, stride, tile, glen
    # query (row, column) of every lane of a program, per kernel: the forward packs the tile row-major into a power
    # of two >= 16; the dQ kernel uses a QUERY_ROWS x QUERY_COLS grid
    fwd_lanes = [(m // txl, m % txl, m < tyl * txl) for m in range(max(16, fwd.next_pow2(tyl * txl)))]
    layouts = [(fwd_lanes, sorted({fwd.key_rows(dict(c.kwargs, KEY_W=geom.key_w)) for c in fwd._CONFIGS}))]
    for config in dq._CONFIGS:
        nargs = dict(config.kwargs, KEY_W=geom.key_w, TILE_Y=tyl, TILE_X=txl)
        nargs["KEY_ROWS"] = fwd.key_rows(nargs)
        nargs["QUERY_COLS"] = dq.query_cols(nargs)
        rows, cols = dq.query_rows(nargs), nargs["QUERY_COLS"]
        lanes = [(m // cols, m % cols, m // cols < tyl and m % cols < txl) for m in range(rows * cols)]
        layouts.append((lanes, [nargs["KEY_ROWS"]]))
    for _, key_rows in layouts:
        assert all(kr * geom.key_w >= 16 for kr in key_rows)  # tl.dot operand minimum
    # window starts from the torch reference's geometry (one dilation group = the sub-lattice of length glen)
    starts_y = axis_windows(gly, kh, 1, sh).start.tolist()
    starts_x = axis_windows(glx, kw, 1, sw).start.tolist()
    for ty0 in range(0, gly, tyl):
        for tx0 in range(0, glx, txl):
            ty_last = min(ty0 + tyl, gly) - 1
            key_y0, key_x0 = starts_y[ty0], starts_x[tx0]
            span_y = starts_y[ty_last] + kh - key_y0
            span_x = starts_x[min(tx0 + txl, glx) - 1] + kw - key_x0
            assert span_x <= geom.key_w
            for lanes, key_rows in layouts:
                for my, mx, in_tile in lanes:
                    qyi, qxi = ty0 + my, tx0 + mx
                    valid = in_tile and qyi < gly and qxi < glx
                    if not valid:  # padding queries use the tile's first query's window
                        qyi, qxi = ty0, tx0
                    qsy, qsx = starts_y[qyi], starts_x[qxi]
                    cls = (qyi - qsy) * kw + (qxi - qsx)
                    q_code = (qsy - geom.shift_y) * geom.cols + (qsx - geom.shift_x) - cls * geom.rows * geom.cols
                    for kr in key_rows:
                        for kyi in range(key_y0, key_y0 + -(-span_y // kr) * kr):
                            for kxi in range(key_x0, key_x0 + geom.key_w):
                                off = kyi * geom.cols + kxi - q_code
                                assert 0 <= off < size, (ty0, tx0, my, mx, kr, kyi, kxi)
                                if valid:
                                    inside = 0 <= kyi - qsy < kh and 0 <= kxi - qsx < kw
                                    assert (table[off] == 0) == inside, (ty0, tx0, my, mx, kyi, kxi)
    # dK/dV kernel: key tiles (same tiling), queries = the inverse neighborhood rectangle; padding keys / queries take
    # the tile's first key / the rectangle's first query
    def first_query_with_start_ge(target, starts):
        return next((i for i, start in enumerate(starts) if start >= target), len(starts))

    n_keys = fwd.next_pow2(tyl * txl) if tyl * txl >= 16 else 16
    for ty0 in range(0, gly, tyl):
        for tx0 in range(0, glx, txl):
            ty_last, tx_last = min(ty0 + tyl, gly) - 1, min(tx0 + txl, glx) - 1
            qy_lo = first_query_with_start_ge(ty0 - kh + 1, starts_y)
            qy_hi = first_query_with_start_ge(ty_last + 1, starts_y)
            qx_lo = first_query_with_start_ge(tx0 - kw + 1, starts_x)
            qx_hi = first_query_with_start_ge(tx_last + 1, starts_x)
            queries = [(y, x) for y in range(qy_lo, qy_hi) for x in range(qx_lo, qx_hi)] + [(qy_lo, qx_lo)]
            for n in range(n_keys):
                kyi, kxi = ty0 + n // txl, tx0 + n % txl
                if not (n < tyl * txl and kyi < gly and kxi < glx):
                    kyi, kxi = ty0, tx0
                for qyi, qxi in queries:
                    qsy, qsx = starts_y[qyi], starts_x[qxi]
                    cls = (qyi - qsy) * kw + (qxi - qsx)
                    q_code = (qsy - geom.shift_y) * geom.cols + (qsx - geom.shift_x) - cls * geom.rows * geom.cols
                    off = kyi * geom.cols + kxi - q_code
                    assert 0 <= off < size, ("dkdv", ty0, tx0, n, qyi, qxi)
                    inside = 0 <= kyi - qsy < kh and 0 <= kxi - qsx < kw
                    assert (table[off] == 0) == inside, ("dkdv", ty0, tx0, kyi, kxi, qyi, qxi)


@pytest.mark.parametrize("config_index", range(5))
def test_forward_every_autotune_config(config_index, monkeypatch):
    """CI runs only the first autotune config; the others (taller key blocks, more row padding) must be exact too:
    the forward pinned to each config, on sliding windows at the borders, dilated, and windows with a dense bias,
    reading the window-logit table (weights that need gradients) and the dense logit block (fixed weights)."""
    from vitzoo.kernels import neighborhood_fwd as fwd

    assert len(fwd._CONFIGS) == 5  # keep the parametrization in step with the config list
    config = fwd._CONFIGS[config_index]
    monkeypatch.setattr(fwd._neighborhood_fwd_kernel, "configs", [config])
    for shape, kernel, dilation, stride, rpb, bias in [((1, 13, 11, 2, 16), (7, 7), (1, 1), (1, 1), True, False),
                                                       ((1, 12, 10, 1, 16), (3, 3), (3, 2), (1, 1), True, True),
                                                       ((1, 14, 7, 1, 16), (7, 7), (1, 1), (7, 7), False, True)]:
        q, k, v, rpb_t, bias_t = _inputs(shape, kernel, rpb=rpb, bias=bias)
        ref = brute_force(q.double(), k.double(), v.double(), kernel, dilation, stride,
                          None if rpb_t is None else rpb_t.double(), None if bias_t is None else bias_t.double())
        for learnable in (True, False):
            weights = [None if t is None else t.clone().requires_grad_(learnable) for t in (rpb_t, bias_t)]
            out = neighborhood_attention_2d(q, k, v, kernel, dilation, stride, *weights, backend="triton")
            err = float((out.double() - ref).norm() / ref.norm())
            assert err < 2e-5, (config, kernel, stride, learnable)


def test_untuned_forward_default_follows_the_block_storage(monkeypatch):
    """With VITZOO_AUTOTUNE=0 on a GPU the forward takes the first config on the table and the measured best on
    average for the block's storage (64-key blocks for fp32, 32-key for fp16). Asserted on the pruner alone."""
    from vitzoo.kernels import neighborhood_fwd as fwd

    monkeypatch.setenv("VITZOO_AUTOTUNE", "0")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    chosen = {}
    for name, dtype, block in [("table", torch.float32, False), ("fp32 block", torch.float32, True),
                               ("fp16 block", torch.float16, True)]:
        (config,) = fwd._prune(fwd._CONFIGS, {"TAB": torch.empty(1, dtype=dtype)}, LOGIT_BLOCK=block)
        chosen[name] = (config.kwargs["BLOCK_N"], config.num_stages)
    assert chosen == {"table": (32, 1), "fp32 block": (64, 2), "fp16 block": (32, 2)}
    monkeypatch.setenv("VITZOO_AUTOTUNE", "1")
    assert fwd._prune(fwd._CONFIGS, {"TAB": torch.empty(1)}, LOGIT_BLOCK=True) == fwd._CONFIGS


@pytest.mark.parametrize("config_index", range(4))
def test_dkdv_every_autotune_config(config_index, monkeypatch):
    """The dK/dV kernel pinned to each autotune config (query chunks of 16-64, padding queries in the last chunk):
    dk and dv against the float64 brute force on a bordered sliding case and a window case."""
    from vitzoo.kernels import tile_attention_bwd as tile
    from vitzoo.kernels import neighborhood_bwd_dkdv as dkdv

    assert len(dkdv._CONFIGS) == 4
    monkeypatch.setattr(dkdv._neighborhood_bwd_dkdv_kernel, "configs", [dkdv._CONFIGS[config_index]])
    monkeypatch.setattr(tile, "ENABLED", False)  # the window case stays on these kernels
    _check((1, 9, 11, 1, 16), (3, 3), (1, 1), (1, 1), rpb=True)
    _check((1, 8, 8, 1, 16), (4, 4), (1, 1), (4, 4), bias=True)


@pytest.mark.parametrize("config_index", range(4))
def test_dq_every_autotune_config(config_index, monkeypatch):
    """The dQ kernel pinned to each autotune config (key blocks of 2-4 rows): dq and the rpb gradient against the
    float64 brute force on a bordered sliding case, a dilated one and windows."""
    from vitzoo.kernels import tile_attention_bwd as tile
    from vitzoo.kernels import neighborhood_bwd_dq as dq

    assert len(dq._CONFIGS) == 4
    monkeypatch.setattr(dq._neighborhood_bwd_dq_kernel, "configs", [dq._CONFIGS[config_index]])
    monkeypatch.setattr(tile, "ENABLED", False)  # the window case stays on these kernels
    _check((1, 11, 9, 1, 16), (7, 7), (1, 1), (1, 1), rpb=True)
    _check((1, 12, 10, 1, 16), (3, 3), (3, 2), (1, 1), rpb=True)
    _check((1, 8, 8, 1, 16), (4, 4), (1, 1), (4, 4), rpb=True)


@pytest.mark.parametrize("kernel, stride", [((7, 7), (1, 1)), ((7, 7), (7, 7)), ((3, 3), (3, 3)), ((13, 13), (1, 1)),
                                            ((1, 16), (1, 16)), ((16, 1), (16, 1)), ((2, 8), (2, 8)), ((5, 3), (2, 1))])
def test_dq_blocks_meet_dot_minimums(kernel, stride):
    """Every tl.dot operand of the dQ kernel is at least 16 x 16 for every config and geometry (GPUs require it, the
    CPU interpreter does not check): the query block, the key block and both rpb-sum matmuls; key blocks stay
    within the rows the window-logit table pads for."""
    from vitzoo.kernels import neighborhood_bwd_dq as dq
    from vitzoo.kernels._neighborhood_table import MAX_KEY_ROWS, table_geometry
    from vitzoo.kernels.neighborhood_fwd import query_tile

    tile = query_tile(kernel, stride)
    geom = table_geometry(kernel, stride, tile)
    for config in dq._CONFIGS:
        nargs = dict(config.kwargs, KEY_W=geom.key_w, TILE_Y=tile[0], TILE_X=tile[1])
        nargs["KEY_ROWS"] = key_rows = dq.key_rows(nargs)
        nargs["QUERY_COLS"] = cols = dq.query_cols(nargs)
        rows = dq.query_rows(nargs)
        assert rows >= tile[0] and cols >= tile[1] and 1 <= key_rows <= MAX_KEY_ROWS
        for dim in (rows * cols, key_rows * geom.key_w, rows * key_rows, cols * geom.key_w):
            assert dim >= 16 and dim == common.next_pow2(dim), (config, dim)


def test_inference_reuses_the_logit_block_until_a_weight_changes(monkeypatch):
    """No-grad calls with fixed rpb / bias build the dense logit block once (per weight view and geometry); an
    in-place weight update, a new weight tensor or recording autograd through the weight rebuilds it. Every call is
    checked against the float64 brute force, so a stale block fails on values, not just on the build count.
    Training calls build the window-logit table every time."""
    from vitzoo.kernels import _neighborhood_table as table_mod
    from vitzoo.kernels import neighborhood_fwd as fwd
    from vitzoo.ops._weight_cache import clear_weight_cache

    builds = []

    def counting(real):
        def build(*args, **kwargs):
            builds.append(real.__name__)
            return real(*args, **kwargs)
        return build

    monkeypatch.setattr(table_mod, "window_logit_table", counting(table_mod.window_logit_table))
    monkeypatch.setattr(fwd, "tile_logit_block", counting(fwd.tile_logit_block))
    clear_weight_cache()
    shape, kernel, dil, stride = (1, 9, 8, 2, 16), (3, 3), (1, 1), (1, 1)
    q, k, v, rpb, _ = _inputs(shape, kernel, rpb=True)
    bias_all = torch.randn(4, 9, 9)  # two per-head slices of one tensor (EfficientViT's per-head calls)

    def call(rpb=None, bias=None, win=kernel, st=stride):
        out = neighborhood_attention_2d(q, k, v, win, dil, st, rpb, bias, backend="triton")
        ref = brute_force(*(t.double() for t in (q, k, v)), win, dil, st,
                          None if rpb is None else rpb.double(), None if bias is None else bias.double())
        assert torch.allclose(out.double(), ref, atol=2e-5), "stale or wrong block"

    with torch.no_grad():
        call(rpb)
        call(rpb)
        assert builds == ["tile_logit_block"], "second no-grad call rebuilt the block"
        rpb.mul_(2.0)  # in-place update: version bump
        call(rpb)
        assert len(builds) == 2
        call(rpb, win=(3, 3), st=(3, 3))  # windows: another geometry, another block
        assert len(builds) == 3
        call(rpb, win=(3, 3), st=(3, 3))
        assert len(builds) == 3
        call(rpb.clone())  # equal values, another tensor: never served from rpb's entry
        assert len(builds) == 4
        call(None, bias_all[0:2].view(2, 9, 9))
        call(None, bias_all[2:4].view(2, 9, 9))
        call(None, bias_all[0:2].view(2, 9, 9))
        assert len(builds) == 6, "per-head slices must get one entry each"
    rpb_leaf = rpb.clone().requires_grad_()
    call(rpb_leaf)
    call(rpb_leaf)
    assert builds[6:] == ["window_logit_table"] * 2, "training (autograd through rpb) must not cache"
    # A frozen rpb with gradients for q: the forward reads the cached table, the backward builds its own.
    q_leaf, q_ref = q.clone().requires_grad_(), q.double().requires_grad_()
    grad_out = torch.randn(*shape[:4], shape[-1])
    neighborhood_attention_2d(q_leaf, k, v, kernel, dil, stride, rpb, None, backend="triton").backward(grad_out)
    brute_force(q_ref, k.double(), v.double(), kernel, dil, stride, rpb.double()).backward(grad_out.double())
    assert torch.allclose(q_leaf.grad.double(), q_ref.grad, atol=2e-5)
    clear_weight_cache()
