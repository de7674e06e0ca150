"""A from-scratch NumPy encoder-decoder transformer with hand-written backprop (no torch).

Read it top-down: `utils/mask.py` (which positions may attend), `nn/layers.py` (each layer's
forward and backward), `nn/attention.py`, `nn/transformer.py`, `nn/losses.py`, then
`train/` (optimisers over dicts of arrays, the loop, the metrics). `lmlab reference
prepare|train|translate --config experiments/configs/tiny_enfr.yaml` drives it end to end.
It is also the independent check of the torch blocks: the same weights give the same logits
and gradients in both (tests/reference/test_cross_check.py).
"""
