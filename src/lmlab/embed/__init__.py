"""Token embeddings, registered in `lmlab.registry.EMBED`."""

from lmlab.embed.parallel import ColumnParallelEmbedding, VocabParallelEmbedding
from lmlab.embed.token import TokenEmbedding

__all__ = ["ColumnParallelEmbedding", "TokenEmbedding", "VocabParallelEmbedding"]
