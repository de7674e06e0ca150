"""Token embeddings, registered in `lmlab.registry.EMBED`."""

from lmlab.embed.token import TokenEmbedding

__all__ = ["TokenEmbedding"]
