"""Row-wise and elementwise kernels against their torch references: embedding, position lookup, RMSNorm,
LayerNorm, rotary, activations. On CPU through the Triton interpreter; on a GPU compiled."""

import pytest
import torch

pytest.importorskip("triton")

from fdpp.codegen.kernels import activation, embedding, layer_norm, rms_norm, rotary
from fdpp.codegen.kernels.testing import assert_close, interpreter_fallback, poisoned_allocations, random_tensor
from helpers import rows_of_interleaved

# without a GPU: in-process under TRITON_INTERPRET=1, else every test here is run again in a child process
_skip_here, test_in_interpreter_process = interpreter_fallback(__file__)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16]
# (batch, seq, hidden): odd sequence lengths, hidden sizes that are and are not powers of two
ROW_SHAPES = [(1, 1, 64), (3, 7, 96), (1, 97, 576), (3, 1, 576)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,seq,hidden", ROW_SHAPES)
def test_embedding(batch, seq, hidden, dtype):
    torch.manual_seed(0)
    table = random_tensor((53, hidden), dtype, DEVICE)
    ids = torch.randint(0, 53, (batch, seq), device=DEVICE)
    with poisoned_allocations():
        out = embedding.embedding(table, ids, block_w=64)          # several column tiles per row
    assert_close(out, embedding.embedding_reference(table, ids), "embedding")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rest", [(64,), (2, 9)])
def test_position_lookup(rest, dtype):
    torch.manual_seed(1)
    table = random_tensor((101, *rest), dtype, DEVICE)
    positions = torch.randint(0, 101, (3, 7), device=DEVICE, dtype=torch.int32)
    with poisoned_allocations():
        out = embedding.position_lookup(table, positions, 1)
    assert_close(out, embedding.position_lookup_reference(table, positions.long(), 1), "position_lookup")


def test_position_lookup_refuses_other_axes():
    with pytest.raises(ValueError, match="seq_axis"):
        embedding.position_lookup(torch.ones(4, 8), torch.zeros(1, 2, dtype=torch.long), 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("batch,seq,hidden", ROW_SHAPES)
def test_rms_norm(batch, seq, hidden, with_residual, dtype):
    torch.manual_seed(2)
    x = random_tensor((batch, seq, hidden), dtype, DEVICE)
    residual = random_tensor((batch, seq, hidden), dtype, DEVICE) if with_residual else None
    weight = random_tensor((hidden,), dtype, DEVICE)
    with poisoned_allocations():
        out, new_residual = rms_norm.rms_norm(x, residual, weight, 1e-6)
    summed = x + residual if with_residual else x
    assert torch.equal(new_residual, summed)
    assert_close(out, rms_norm.rms_norm_reference(summed, weight, 1e-6), "rms_norm")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual,with_bias", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("batch,seq,hidden", ROW_SHAPES)
def test_layer_norm(batch, seq, hidden, with_residual, with_bias, dtype):
    torch.manual_seed(3)
    x = random_tensor((batch, seq, hidden), dtype, DEVICE, scale=3.0) + 1.0     # a mean to remove
    residual = random_tensor((batch, seq, hidden), dtype, DEVICE) if with_residual else None
    weight = random_tensor((hidden,), dtype, DEVICE)
    bias = random_tensor((hidden,), dtype, DEVICE) if with_bias else None
    with poisoned_allocations():
        out, new_residual = layer_norm.layer_norm(x, residual, weight, bias, 1e-5)
    summed = x + residual if with_residual else x
    assert torch.equal(new_residual, summed)
    assert_close(out, layer_norm.layer_norm_reference(summed, weight, bias, 1e-5), "layer_norm")


@pytest.mark.parametrize("norm", ["rms_norm", "layer_norm"])
@pytest.mark.parametrize("rows,together", [(1, 2), (3, 4), (5, 8), (8, 8), (6, 2)])
def test_norms_write_rows_interleaved(norm, rows, together):
    """out_rows_together: the same values with each column's rows side by side, [cdiv(rows, T), H, T], as the
    chunked-CSR linear after the norm reads its x (the last block's padding rows are never read)."""
    torch.manual_seed(4)
    x = random_tensor((rows, 96), torch.float16, DEVICE)
    weight = random_tensor((96,), torch.float16, DEVICE)
    args = (x, None, weight) + ((random_tensor((96,), torch.float16, DEVICE),) if norm == "layer_norm" else ())
    launch = rms_norm.rms_norm if norm == "rms_norm" else layer_norm.layer_norm
    plain, _ = launch(*args, 1e-5)
    with poisoned_allocations():
        interleaved, _ = launch(*args, 1e-5, out_rows_together=together)
    assert interleaved.shape == (-(-rows // together), 96, together)
    assert torch.equal(rows_of_interleaved(interleaved, rows), plain)


def test_norm_refuses_block_smaller_than_row():
    with pytest.raises(ValueError, match="block_h"):
        rms_norm.rms_norm(torch.ones(2, 96), None, torch.ones(96), 1e-6, block_h=64)


# (batch, seq, heads, head_dim): the 9 query / 3 KV heads of a GQA model at head_dim 64, and 4 heads
ROTARY_SHAPES = [(1, 1, 9, 64), (3, 7, 3, 64), (1, 97, 4, 64), (3, 7, 9, 32)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_batch_tables", [False, True])
@pytest.mark.parametrize("batch,seq,heads,head_dim", ROTARY_SHAPES)
def test_rotary_flat(batch, seq, heads, head_dim, per_batch_tables, dtype):
    torch.manual_seed(4)
    x = random_tensor((batch, seq, heads * head_dim), dtype, DEVICE)
    angles = torch.rand((batch if per_batch_tables else 1, seq, head_dim), device=DEVICE) * 6.3
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    with poisoned_allocations():
        out = rotary.rotary(x, cos, sin, head_dim, "flat", block_heads=2)     # several head tiles
    assert_close(out, rotary.rotary_reference(x, cos, sin, head_dim, "flat"), "rotary flat")


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_heads_layout(dtype):
    torch.manual_seed(5)
    x = random_tensor((3, 9, 7, 64), dtype, DEVICE)
    angles = torch.rand((1, 7, 64), device=DEVICE) * 6.3
    with poisoned_allocations():
        out = rotary.rotary(x, angles.cos(), angles.sin(), 64, "heads")
    assert_close(out, rotary.rotary_reference(x, angles.cos(), angles.sin(), 64, "heads"), "rotary heads")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,seq,heads,head_dim", ROTARY_SHAPES)
def test_rotary_by_position(batch, seq, heads, head_dim, dtype):
    torch.manual_seed(6)
    x = random_tensor((batch, seq, heads * head_dim), dtype, DEVICE)
    angles = torch.rand((200, head_dim), device=DEVICE) * 6.3
    cos_table, sin_table = angles.cos(), angles.sin()             # float32 tables, as a bundle stores them
    positions = torch.randint(0, 200, (batch, seq), device=DEVICE)
    with poisoned_allocations():
        out = rotary.rotary_by_position(x, cos_table, sin_table, positions, head_dim)
    ref = rotary.rotary_by_position_reference(x, cos_table, sin_table, positions, head_dim)
    assert_close(out, ref, "rotary_by_position")


ACTIVATION_SHAPES = [(1, 1, 64), (3, 7, 96), (1, 97, 576)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(activation.ACTIVATION_CODES))
@pytest.mark.parametrize("batch,seq,width", ACTIVATION_SHAPES)
def test_activation(batch, seq, width, kind, dtype):
    torch.manual_seed(7)
    x = random_tensor((batch, seq, width), dtype, DEVICE, scale=4.0)
    with poisoned_allocations():
        out = activation.activation(x, kind, block=64)
    assert_close(out, activation.activation_reference(x, kind), f"activation {kind}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("batch,seq,width", ACTIVATION_SHAPES)
def test_gated_act(batch, seq, width, kind, dtype):
    torch.manual_seed(8)
    gate = random_tensor((batch, seq, width), dtype, DEVICE, scale=4.0)
    up = random_tensor((batch, seq, width), dtype, DEVICE)
    with poisoned_allocations():
        out = activation.gated_act(gate, up, kind)
    assert_close(out, activation.gated_act_reference(gate, up, kind), f"gated_act {kind}")


def test_gated_act_on_halves_of_a_fused_buffer():
    torch.manual_seed(9)
    gate_up = random_tensor((3, 7, 2 * 96), torch.float32, DEVICE)
    gate, up = gate_up[..., :96], gate_up[..., 96:]               # strided views, no copy
    with poisoned_allocations():
        out = activation.gated_act(gate, up, "silu")
    assert_close(out, activation.gated_act_reference(gate, up, "silu"), "gated_act halves")
