"""Tokenizers, corpora and batch loaders."""
