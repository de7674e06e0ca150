"""Torch-free text helpers shared by lmlab and its NumPy reference: word vocabularies, sentence pairs, metrics.

Only NumPy and the standard library: `lmlab.reference` builds on this package and stays torch-free.
"""
