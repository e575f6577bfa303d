"""Triton biased dense-attention kernels (vitzoo.kernels.biased_attention_*) under the CPU interpreter
(TRITON_INTERPRET=1, set by tests/conftest.py): outputs and dq / dk / dv / d_bias against a float64 brute force, for
every bias-gradient path (registers / global partials, dq- or dkdv-owned, one or several chunks), masked tiles,
-inf masks, strided inputs, fp16, autocast and torch.compile. Unwritten outputs are caught by filling every
torch.empty with NaN (torch's deterministic mode). Shapes are tiny: the interpreter is ~1000x slower than a GPU."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import vitzoo.kernels.biased_attention_bwd as bwd_module  # noqa: E402
import vitzoo.kernels.strip_attention_bwd as strip  # noqa: E402
import vitzoo.kernels.tile_attention_bwd as tile  # noqa: E402
from vitzoo.kernels.biased_attention_fwd import biased_attention_fwd  # noqa: E402
from vitzoo.ops import agent_attention, biased_attention  # noqa: E402


pytestmark = pytest.mark.usefixtures("nan_poisoned_empty")  # tests/conftest.py: unwritten outputs are NaN


def _brute(q, k, v, bias, scale):
    logits = scale * torch.einsum("bhqd,bhkd->bhqk", q, k)
    if bias is not None:
        logits = logits + bias.expand_as(logits)
    return torch.einsum("bhqk,bhkd->bhqd", torch.softmax(logits, dim=-1), v)


def _rel(a, b):
    return float((a.detach().double() - b.detach()).norm() / b.detach().norm())


def _run(q, k, v, bias, go, **kw):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (q, k, v, bias)]
    out = biased_attention(*leaves, backend="triton", **kw)
    out.backward(go)
    return out.detach(), [t.grad if t is not None else None for t in leaves]


def _check(q, k, v, bias, tol, scale=None, bias_grad=True):
    d = q.shape[-1]
    scale = d ** -0.5 if scale is None else scale
    go = torch.randn(*q.shape[:3], v.shape[-1], dtype=q.dtype)
    bias_in = bias.detach().requires_grad_(bias_grad) if bias is not None else None
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = biased_attention(*leaves, bias_in, scale=scale, backend="triton")
    out.backward(go)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    ref_bias = bias.detach().double().requires_grad_(True) if bias is not None else None
    ref = _brute(*ref_leaves, ref_bias, scale)
    ref.backward(go.double())
    assert out.dtype == q.dtype and out.shape == ref.shape
    assert _rel(out, ref) < tol, ("out", _rel(out, ref))
    for name, t, r in zip("qkv", leaves, ref_leaves):
        assert t.grad.shape == r.shape and _rel(t.grad, r.grad) < tol, (name, _rel(t.grad, r.grad))
    if bias is not None and bias_grad:
        assert bias_in.grad.shape == bias.shape and bias_in.grad.dtype == bias.dtype
        assert _rel(bias_in.grad, ref_bias.grad) < tol, ("bias", _rel(bias_in.grad, ref_bias.grad))
    return out, [t.grad for t in leaves] + [bias_in.grad if bias_in is not None else None]


# (B, H, Lq, Lk, d, d_v, bias shape, REGISTER_DBIAS_MAX, n_chunks, expected d_bias owner and mode)
CASES = {
    # Lq = agents: dkdv owns d_bias in registers, one chunk summing both batches in-program
    "agent-side-regs-dkdv": (2, 2, 9, 40, 16, 32, "hqk", 64, 1, ("dkdv", bwd_module.DBIAS_REGISTERS)),
    # Lk = agents: dq owns, registers, 4 (batch, head) members in 2 chunks of 2, partials summed
    "query-side-regs-dq": (2, 2, 37, 9, 32, 16, "11qk", 64, 2, ("dq", bwd_module.DBIAS_REGISTERS)),
    # both sides > one tile: dkdv read-modify-writes its partial strip over the 2 heads
    "global-dkdv-batch-bias": (2, 2, 20, 35, 16, 16, "b1qk", 16, 1, ("dkdv", bwd_module.DBIAS_GLOBAL)),
    # dq read-modify-writes over batch and heads, 2 chunks
    "global-dq-2d-bias": (2, 2, 35, 20, 16, 16, "qk", 16, 2, ("dq", bwd_module.DBIAS_GLOBAL)),
    # nothing to reduce
    "full-bias-d64": (1, 2, 17, 17, 64, 64, "bhqk", 64, 1, ("dkdv", bwd_module.DBIAS_REGISTERS)),
}


def _force_split(monkeypatch, n_chunks, module=bwd_module):
    def split(members, *_, **__):
        per_chunk = -(-members // n_chunks)
        return per_chunk, -(-members // per_chunk)

    monkeypatch.setattr(module, "chunk_split", split)


def _spy_owner(monkeypatch):
    seen = []
    for name in ("dq", "dkdv"):
        launcher = getattr(bwd_module, f"biased_attention_bwd_{name}")

        def spy(*args, _launcher=launcher, _name=name):
            if args[-1] != bwd_module.DBIAS_NONE:
                seen.append((_name, args[-1]))
            return _launcher(*args)

        monkeypatch.setattr(bwd_module, f"biased_attention_bwd_{name}", spy)
    return seen


def _bias(kind, b, h, lq, lk, dtype=torch.float32):
    sizes = {"q": lq, "k": lk, "h": h, "b": b, "1": 1}
    return torch.randn(tuple(sizes[c] for c in kind), dtype=dtype)


@pytest.fixture
def general_kernels(monkeypatch):
    """The delta + dk/dv + dq kernels even for calls the one-tile or strip backward would take
    (VITZOO_TILE_BACKWARD=0, VITZOO_STRIP_BACKWARD=0)."""
    monkeypatch.setattr(tile, "ENABLED", False)
    monkeypatch.setattr(strip, "ENABLED", False)


@pytest.fixture(params=["one_tile", "strip", "general"])
def backward_path(request, monkeypatch):
    """Every backward path of calls that fit one tile: the one-tile kernel, the strip kernel, the general kernels."""
    monkeypatch.setattr(tile, "ENABLED", request.param == "one_tile")
    monkeypatch.setattr(strip, "ENABLED", request.param in ("one_tile", "strip"))
    monkeypatch.setattr(strip, "MIN_PAIRS_PER_SM", 0)  # tiny batches too
    return request.param


@pytest.mark.usefixtures("general_kernels")
@pytest.mark.parametrize("case", list(CASES))
def test_fp32_matches_float64(case, monkeypatch):
    b, h, lq, lk, d, dv, kind, reg_max, n_chunks, owner = CASES[case]
    monkeypatch.setattr(bwd_module, "REGISTER_DBIAS_MAX", reg_max)
    _force_split(monkeypatch, n_chunks)
    seen = _spy_owner(monkeypatch)
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, dv)
    _check(q, k, v, _bias(kind, b, h, lq, lk), tol=1e-4)
    assert seen == [owner]


@pytest.mark.parametrize("path", ["general", "strip"])
def test_partial_strips_are_deterministic(path, monkeypatch):
    """Programs that read-modify-write their fp32 bias-gradient strip over several members: bitwise repeatable (the
    general kernels' global mode with 2 chunks; the strip kernel with both batch elements in one chunk)."""
    if path == "general":
        monkeypatch.setattr(tile, "ENABLED", False)
        monkeypatch.setattr(strip, "ENABLED", False)
        monkeypatch.setattr(bwd_module, "REGISTER_DBIAS_MAX", 16)
        _force_split(monkeypatch, 2)
        lq, lk = 20, 24
    else:
        _force_split(monkeypatch, 1, strip)
        lq, lk = 9, 70
    q, k, v, bias = torch.randn(2, 2, lq, 16), torch.randn(2, 2, lk, 16), torch.randn(2, 2, lk, 16), torch.randn(lq, lk)
    go = torch.randn(2, 2, lq, 16)
    (_, g1), (_, g2) = _run(q, k, v, bias, go), _run(q, k, v, bias, go)
    for a, c in zip(g1, g2):
        assert torch.equal(a, c)


def test_fp16_strided_inputs_no_bias_grad(backward_path):
    """fp16 q/k/v in the official (b, n, heads, d) -> permute layout (non-contiguous), fp32 bias without grad."""
    b, h, n, agents, d = 2, 2, 24, 9, 16
    x = torch.randn(b, n, 3, h, d).half()
    q, k, v = x.unbind(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    assert not q.is_contiguous()
    _check(q, k, v, _bias("hqk", b, h, n, n), tol=2e-3, bias_grad=False)
    tokens = torch.randn(b, h, agents, d).half()
    _check(tokens, k, v, _bias("hqk", b, h, agents, n), tol=2e-3)


def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args: calls.append(1) or real(*args))
    return calls


# (B, H, Lq, Lk, d, d_v, bias shape): queries and keys each fit one tile, the bias is shared over the batch
ONE_TILE_CASES = {
    "agents-read-keys-per-head-bias": (2, 3, 9, 40, 16, 32, "hqk"),
    "keys-are-agents-one-bias-for-all-heads": (2, 2, 37, 9, 32, 16, "11qk"),
    "full-64-by-64-d64": (1, 2, 64, 64, 64, 64, "1hqk"),
    "2-d-bias": (3, 1, 17, 23, 16, 16, "qk"),
    "no-bias": (2, 2, 17, 30, 32, 32, None),
}


@pytest.mark.parametrize("case", list(ONE_TILE_CASES))
def test_one_tile_backward_matches_float64(case, monkeypatch):
    """Calls whose queries and keys each fit one tile train through kernels/tile_attention_bwd.py: outputs and
    dq / dk / dv / d_bias against float64 (the bias gradient summed over the batch, and over heads for a bias shared
    by all heads)."""
    b, h, lq, lk, d, dv, kind = ONE_TILE_CASES[case]
    calls = _spy(monkeypatch, tile, "tile_attention_bwd")
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, dv)
    _check(q, k, v, _bias(kind, b, h, lq, lk) if kind else None, tol=1e-4)
    assert calls == [1]


# (B, H, Lq, Lk, d, d_v, bias shape, chunks): only the shorter side fits one tile (or the bias is per sample); the
# chunk count is forced so that programs sum several members' dS in their partial strip
STRIP_CASES = {
    "agents-read-keys-per-head-bias": (2, 3, 9, 70, 16, 32, "hqk", 1),
    "queries-read-agents-one-bias-for-all-heads": (2, 2, 70, 9, 32, 16, "11qk", 2),
    "per-sample-bias-one-tile-both-sides": (2, 2, 20, 30, 16, 16, "bhqk", 1),
    "per-sample-bias-shared-by-heads": (2, 3, 20, 70, 16, 16, "b1qk", 1),
    "2-d-bias-d64-three-chunks": (2, 2, 17, 90, 64, 64, "qk", 3),
    "exactly-64-agents": (2, 2, 64, 80, 16, 16, "hqk", 1),
    "no-bias": (2, 2, 100, 33, 32, 32, None, 1),
}


@pytest.mark.parametrize("case", list(STRIP_CASES))
def test_strip_backward_matches_float64(case, monkeypatch):
    """Calls whose shorter side fits one tile train through kernels/strip_attention_bwd.py (one pass; fixed keys when
    Lk <= Lq, else fixed queries): outputs and dq / dk / dv / d_bias against float64."""
    b, h, lq, lk, d, dv, kind, n_chunks = STRIP_CASES[case]
    _force_split(monkeypatch, n_chunks, strip)
    calls = _spy(monkeypatch, strip, "strip_attention_bwd")
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, dv)
    _check(q, k, v, _bias(kind, b, h, lq, lk) if kind else None, tol=1e-4)
    assert calls == [1]


def test_too_few_sequences_for_the_strip_kernel_take_the_general_kernels(monkeypatch):
    """Fewer (batch, head) pairs than ``MIN_PAIRS_PER_SM`` x SMs (4 under the interpreter): the general kernels."""
    monkeypatch.setattr(strip, "MIN_PAIRS_PER_SM", 3)
    calls = _spy(monkeypatch, strip, "strip_attention_bwd")
    q, k, v = torch.randn(1, 2, 9, 16), torch.randn(1, 2, 70, 16), torch.randn(1, 2, 70, 16)
    _check(q, k, v, _bias("hqk", 1, 2, 9, 70), tol=1e-4)
    assert not calls


def test_strip_untuned_tiles_on_gpu(monkeypatch):
    """With VITZOO_AUTOTUNE=0 on a GPU the strip kernel loops in 64-row tiles, 32 with 64 fixed queries (H100
    sweep); the interpreter keeps its small tile. Asserted on the pruner alone: no GPU needed."""
    prune = strip._strip_attention_bwd_kernel.early_config_prune
    configs = strip._strip_attention_bwd_kernel.configs
    assert [c.kwargs["BLOCK_L"] for c in prune(configs, {}, FIXED_KEYS=False, BLOCK_FIXED=64)] == [16]
    monkeypatch.setenv("VITZOO_AUTOTUNE", "0")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    for fixed_keys, block_fixed, want in ((False, 64, 32), (True, 64, 64), (False, 16, 64)):
        chosen = prune(configs, {}, FIXED_KEYS=fixed_keys, BLOCK_FIXED=block_fixed)
        assert [c.kwargs["BLOCK_L"] for c in chosen] == [want]
    monkeypatch.setenv("VITZOO_AUTOTUNE", "1")
    assert prune(configs, {}, FIXED_KEYS=True, BLOCK_FIXED=16) == configs


@pytest.mark.parametrize("shape, bias_kind", [((2, 2, 66, 65), "hqk"), ((2, 2, 70, 80), "bhqk")])
def test_calls_with_both_sides_over_one_tile_take_the_general_kernels(shape, bias_kind, monkeypatch):
    """More than 64 queries and keys: the delta + dk/dv + dq kernels."""
    b, h, lq, lk = shape
    calls = _spy(monkeypatch, tile, "tile_attention_bwd") + _spy(monkeypatch, strip, "strip_attention_bwd")
    seen = _spy_owner(monkeypatch)
    q, k, v = torch.randn(b, h, lq, 16), torch.randn(b, h, lk, 16), torch.randn(b, h, lk, 16)
    _check(q, k, v, _bias(bias_kind, b, h, lq, lk), tol=1e-4)
    assert not calls and seen


def test_outputs_and_grads_follow_the_input_memory_order():
    """Head-split views of one token-major projection (the Agent-Swin layout) get a token-major output and token-major
    dq / dk / dv, so the caller's reshape back to (B, N, C) and the views' backward are free; contiguous inputs keep
    contiguous results. The custom ops' fake impls report the same strides (opcheck), so compiled graphs agree."""
    from vitzoo.ops._biased_triton import _OP

    b, h, n, agents, d = 2, 2, 20, 9, 16
    qkv = torch.randn(b, n, 3, h, d)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    tokens = torch.randn(b, h, agents, d)
    bias = torch.randn(h, agents, n)
    for query, key, value, lk in ((q, tokens, tokens, agents), (tokens, k, v, n)):
        leaves = [t.detach().requires_grad_(True) for t in (query, key, value)]
        # the head-split views as autograd sees them: grads of a (B, N, H, d) buffer, viewed
        views = [t.transpose(1, 2).contiguous().transpose(1, 2) if t.stride(1) < t.stride(2) else t for t in leaves]
        qb = bias if lk == n else torch.randn(h, n, agents)
        out = biased_attention(*views, qb, backend="triton")
        grads = torch.autograd.grad(out, views, torch.randn_like(out))
        ref = _brute(*(t.detach().double() for t in views), qb.double(), d ** -0.5)
        assert _rel(out, ref) < 1e-4
        for view, grad in zip([out] + list(views), [out] + list(grads)):
            assert grad.shape == view.shape
            token_major = view.stride(1) < view.stride(2)
            assert (grad.transpose(1, 2).is_contiguous() if token_major else grad.is_contiguous()), \
                (tuple(view.stride()), tuple(grad.stride()))
        assert out.transpose(1, 2).is_contiguous() == (views[0].stride(1) < views[0].stride(2))
    torch.library.opcheck(_OP.forward_op, (q.contiguous().transpose(1, 2).transpose(1, 2), tokens, tokens, None,
                                           0.25), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(_OP.forward_op, (q, k, v, None, 0.25), test_utils=("test_schema", "test_faketensor"))
    out, lse = _OP.forward_impl(q, k, v, None, 0.25)
    torch.library.opcheck(_OP.backward_op, (torch.randn_like(out), q, k, v, None, out, lse, 0.25, False),
                          test_utils=("test_schema", "test_faketensor"))


def test_inf_masked_tile_and_no_bias(backward_path):
    b, h, lq, lk, d = 1, 2, 18, 40, 16
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, d)
    mask = torch.zeros(h, lq, lk)
    mask[:, :, 0:16] = float("-inf")  # a whole key tile is -inf for every row: exercises the all--inf running max
    mask[1, 3, 20:] = float("-inf")
    out, grads = _check(q, k, v, mask, tol=1e-4, bias_grad=False)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads[:3])
    _check(q, k, v, None, tol=1e-4, scale=0.37)


def test_agent_attention_triton_matches_torch():
    b, h, n, agents, d = 1, 2, 20, 12, 16
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    tokens = torch.randn(b, h, agents, d)
    ab, qb = torch.randn(h, agents, n), torch.randn(h, n, agents)
    go = torch.randn(b, h, n, d)
    results = []
    for backend in ("triton", "torch"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, tokens, ab, qb)]
        out = agent_attention(*leaves, backend=backend)
        out.backward(go)
        results.append([out.detach()] + [t.grad for t in leaves])
    for a, r in zip(*results):
        assert _rel(a, r.double()) < 1e-4


def test_autocast_and_compile():
    b, h, lq, lk, d = 1, 2, 9, 20, 16
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, d)
    bias = torch.randn(h, lq, lk)
    ref = _brute(q.double(), k.double(), v.double(), bias.double(), d ** -0.5)
    with torch.autocast("cpu", dtype=torch.float16):
        out = biased_attention(q, k, v, bias, backend="triton")
    assert out.dtype == torch.float16 and _rel(out, ref) < 2e-3

    go = torch.randn(b, h, lq, d)
    eager_out, eager_grads = _run(q, k, v, bias, go)
    compiled = torch.compile(lambda *t: biased_attention(*t, backend="triton"), backend="aot_eager", fullgraph=True)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, bias)]
    out = compiled(*leaves)
    out.backward(go)
    assert torch.equal(out.detach(), eager_out)
    for t, g in zip(leaves, eager_grads):
        assert torch.equal(t.grad, g)


def test_kernel_errors():
    q = torch.randn(1, 2, 9, 24)
    with pytest.raises(ValueError, match="head_dim"):
        biased_attention(q, q, q, backend="triton")
    q = torch.randn(1, 2, 9, 16)
    with pytest.raises(ValueError, match="v head_dim"):
        biased_attention(q, q, torch.randn(1, 2, 9, 8), backend="triton")
    with pytest.raises(ValueError, match="dtype"):
        biased_attention(q.double(), q.double(), q.double(), backend="triton")
    with pytest.raises(ValueError, match="head_dim must be one of"):
        biased_attention_fwd(torch.randn(1, 1, 9, 8), torch.randn(1, 1, 9, 8), torch.randn(1, 1, 9, 8), None, 1.0)
    x = torch.randn(1, 1, 65, 16)
    with pytest.raises(ValueError, match=r"min\(Lq, Lk\) <= 64"):
        strip.strip_attention_bwd(x, x, x, x, None, x, x[..., 0], x, x, x, 1.0, False)


@pytest.mark.parametrize("kernel_name,lq,lk,mode,want", [
    ("biased_attention_fwd", 9, 3136, None, (16, 128)),  # agents read all keys: a minimal program, long loop tiles
    ("biased_attention_fwd", 3136, 9, None, (64, 16)),  # queries read 9 agents
    ("biased_attention_fwd", 49, 49, None, (64, 16)),  # narrow loop tiles under 64-row programs (registers)
    ("biased_attention_fwd", 49, 196, None, (64, 16)),
    ("biased_attention_bwd_dkdv", 9, 3136, 1, (64, 16)),  # (key tile, query tile); d_bias in registers
    ("biased_attention_bwd_dq", 3136, 49, 0, (64, 64)),
])
def test_untuned_default_tiles_on_gpu(monkeypatch, kernel_name, lq, lk, mode, want):
    """With VITZOO_AUTOTUNE=0 on a GPU (no interpreter) each launcher keeps the config nearest ``default_tiles``, not
    the smallest one (which stays the interpreter's choice). Asserted on the pruner alone: no GPU needed."""
    import importlib

    module = importlib.import_module(f"vitzoo.kernels.{kernel_name}")
    kernel = next(getattr(module, n) for n in dir(module)
                  if n.startswith("_biased_attention_") and n.endswith("kernel"))
    prune = kernel.early_config_prune
    args = dict(Lq=lq, Lk=lk) if mode is None else dict(Lq=lq, Lk=lk, DBIAS_MODE=mode)
    blocks = ("BLOCK_N", "BLOCK_M") if "dkdv" in kernel_name else ("BLOCK_M", "BLOCK_N")
    monkeypatch.setenv("VITZOO_AUTOTUNE", "0")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    (chosen,) = prune(kernel.configs, args)
    assert tuple(chosen.kwargs[b] for b in blocks) == want
    if kernel_name == "biased_attention_fwd" and want == (64, 16):
        # the pipelined twin of the (64, 16) tile (num_stages is 1 in every config under the interpreter, so the
        # spec list is read by the chosen config's position)
        assert module._CONFIGS[kernel.configs.index(chosen)] == (64, 16, 4, 3)
    monkeypatch.setenv("VITZOO_AUTOTUNE", "1")
    survivors = prune(kernel.configs, args)  # what the autotuner would time: the default is one of them
    assert chosen in survivors
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    (smallest,) = prune(kernel.configs, args)
    assert smallest is survivors[0]  # the interpreter keeps the first (smallest) survivor
