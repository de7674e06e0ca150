"""`lmlab inspect`: attention maps, logit lens and per-layer norms, each checked against the model itself."""

import torch

from lmlab.infer.inspect import write_inspection
from lmlab.model.build import build_model
from lmlab.model.inspect import inspect_model
from tests.conftest import tiny_cfg


def _model(**kw):
    torch.manual_seed(0)
    return build_model(tiny_cfg("llama", n_layer=2, d_model=32, n_head=4, n_kv_head=2, vocab_size=23, **kw)).eval()


IDS = torch.tensor([[3, 7, 1, 9, 9, 4, 2, 11, 5]])


def _decode(i: int) -> str:
    return f"t{i}"


def test_maps_are_the_kernels_own_probabilities_and_the_last_lens_row_is_the_models_prediction():
    model = _model(attn="sdpa")
    captured = []
    for b in model.blocks:  # each layer's attention output, as its fused kernel computes it
        b.attn.register_forward_hook(lambda m, a, out: captured.append(out))
    insp = inspect_model(model, IDS, _decode, top=3)
    T = IDS.shape[1] - 1
    assert sorted(insp.attention) == [0, 1] and insp.no_attention is None
    for probs in insp.attention.values():
        assert probs.shape == (4, T, T)
        torch.testing.assert_close(probs.sum(-1), torch.ones(4, T))
        assert torch.all(probs.triu(1) == 0)  # causal
    with torch.no_grad():
        logits = model(IDS[:, :-1]).logits[0].softmax(-1)
    top = logits.topk(3, dim=-1)
    assert [[t for t, _ in pos] for pos in insp.lens[-1]] == [[_decode(int(i)) for i in row] for row in top.indices]
    torch.testing.assert_close(torch.tensor([[p for _, p in pos] for pos in insp.lens[-1]]), top.values)
    assert len(insp.lens) == 2 and len(insp.tokens) == T


def test_maps_times_values_give_the_attention_output():
    from lmlab.model import inspect as module

    model = _model(attn="mha")
    store = []
    undo = module._record_attention(model.blocks[0].attn, store)
    try:
        with torch.no_grad():
            model(IDS)
    finally:
        undo()
    probs, v, y = store[0]
    v = v.repeat_interleave(probs.shape[1] // v.shape[1], dim=1)  # grouped key/value heads
    torch.testing.assert_close(probs @ v, y)
    assert "attend" not in vars(model.blocks[0].attn)  # the instance is as it was


def test_norms_are_each_blocks_output_rms_and_parameter_gradient_norm():
    model = _model()
    insp = inspect_model(model, IDS, _decode)
    outs = []
    hooks = [b.register_forward_hook(lambda m, a, out: outs.append(out.detach())) for b in model.blocks]
    model(IDS[:, :-1], targets=IDS[:, 1:]).loss.backward()
    for h in hooks:
        h.remove()
    for i, b in enumerate(model.blocks):
        assert abs(insp.activation_rms[i] - float(outs[i].pow(2).mean().sqrt())) < 1e-6
        grad = torch.cat([p.grad.flatten() for p in b.parameters()]).norm()
        assert abs(insp.grad_norm[i] - float(grad)) < 1e-5 * float(grad)
    assert all(g > 0 for g in insp.grad_norm)


def test_an_attention_without_per_head_maps_still_gets_the_lens_and_norms(tmp_path):
    model = _model(attn="mla")
    insp = inspect_model(model, IDS, _decode)
    assert insp.attention == {} and "MLA" in insp.no_attention and len(insp.lens) == 2
    written = write_inspection(insp, tmp_path)
    assert not list(tmp_path.glob("*.png")) and "No attention maps: MLA" in (tmp_path / "norms.md").read_text()
    assert {p.name for p in written} == {"logit_lens.md", "norms.md", "inspect.json"}


def test_the_files_hold_a_grid_per_layer_and_the_tables(tmp_path):
    insp = inspect_model(_model(), IDS, _decode)
    names = {p.name for p in write_inspection(insp, tmp_path)}
    assert {"attention_layer0.png", "attention_layer1.png", "logit_lens.md", "norms.md"} <= names
    lens = (tmp_path / "logit_lens.md").read_text().splitlines()
    assert lens[2].startswith("| layer | `t3` |") and len(lens) == 4 + 2
