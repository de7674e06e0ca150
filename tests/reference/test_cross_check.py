"""The torch Seq2Seq and the NumPy reference, given the same weights, agree on logits and gradients."""

import numpy as np
import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.model.build import build_model
from lmlab.model.seq2seq import seq2seq_loss, to_reference
from lmlab.reference.nn.losses import cross_entropy_masked
from lmlab.reference.nn.transformer import Seq2Seq as RefSeq2Seq
from lmlab.reference.nn.transformer import Seq2SeqConfig
from lmlab.text.pairs import make_batch


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("attn", ["mha", "sdpa"])
def test_same_weights_same_logits_and_gradients(attn, dtype):
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="seq2seq",
        attn=attn,
        pos="sinusoidal",
        norm="layernorm",
        ffn="mlp",
        activation="gelu_tanh",
        vocab_size=13,
        src_vocab_size=11,
        n_layer=2,
        n_enc_layer=2,
        n_head=2,
        d_model=16,
        d_ff=24,
        tie_weights=False,
        init_std=0.3,  # larger than usual so attention is far from uniform and every path carries gradient
    )
    model = build_model(cfg).to(getattr(torch, dtype))
    ref = RefSeq2Seq(Seq2SeqConfig(src_vocab=11, tgt_vocab=13, d_model=16, n_head=2, n_layer=2, d_ff=24))
    ref.astype(np.dtype(dtype).type)
    ref.load(to_reference(dict(model.named_parameters()), cfg))

    batch = make_batch([([4, 5, 6, 7, 2], [7, 8, 9]), ([9, 2], [10]), ([3, 8, 2], [11, 12, 5, 6])])
    tb = {k: torch.from_numpy(v) for k, v in batch.items()}
    logits = model(tb["X_ids"].long(), tb["Y_in"].long(), tb["M_src"], tb["M_tgt"]).logits
    ref_logits = ref.forward(batch["X_ids"], batch["M_src"], batch["Y_in"], batch["M_tgt"])
    np.testing.assert_allclose(logits.detach().numpy(), ref_logits, rtol=1e-5, atol=1e-5)
    assert logits.dtype == getattr(torch, dtype) and ref_logits.dtype == np.dtype(dtype)

    loss = seq2seq_loss(model, tb)
    loss.backward()
    ref.zero_grad()
    ref_loss, dlogits = cross_entropy_masked(ref_logits, batch["Y_out"], batch["M_tgt"])
    ref.backward(dlogits)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-6)  # torch takes the loss in float32
    grads = to_reference({n: p.grad for n, p in model.named_parameters()}, cfg)
    ref_grads = ref.gradients()
    assert set(grads) == set(ref_grads)
    for name, g in grads.items():
        scale = max(np.abs(g).max(), 1e-3)  # key biases get exactly zero gradient: compare those absolutely
        assert np.abs(g - ref_grads[name]).max() / scale < 1e-4, name
