"""Orchestration on top of everything else: config -> data -> model -> trainer + trackers -> run directory.

`train.py` runs one config; `ablate.py`, `sweep.py` and `replay.py` are studies made of runs;
`export.py` turns a run into a transformers directory or safetensors and back (`import_hf`).
"""
