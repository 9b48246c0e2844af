"""Which module is which in a model nobody described: the Grad-CAM target layer and the
token embedding that report-word IG interpolates, found from the module tree (and, for
the text embedding, one forward pass when the tree is ambiguous)."""

from __future__ import annotations

from torch import nn

#: Module types that look token ids up; the token-embedding layer of text IG is one of them
#: (or the Hugging Face ``embeddings`` block around one).
TOKEN_EMBEDDINGS: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


def detect_gradcam_layer(module: nn.Module, prefer: str | None = None) -> str | None:
    """The last Conv2d (under ``prefer`` when given) — the usual Grad-CAM target."""
    last = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d) and (prefer is None or name.startswith(prefer)):
            last = name
    if last is None and prefer is not None:
        return detect_gradcam_layer(module, None)
    return last


def is_under(name: str, root: str | None) -> bool:
    return not root or name == root or name.startswith(root + ".")


def _embedding_block(name: str, root: str | None) -> str:
    """``name``, or its parent when that is a Hugging Face ``embeddings`` block (word +
    position embeddings and LayerNorm): IG then moves the whole token vector the encoder
    reads, as captum's BERT examples do, and the positions, the same at both ends of the
    path, cancel. Never above the text encoder named in ``model.layers.text``."""
    parent = name.rpartition(".")[0]
    if parent and parent.split(".")[-1] == "embeddings" and is_under(parent, root):
        return parent
    return name


def detect_text_embedding_layer(module: nn.Module, text_root: str | None = None) -> str | None:
    """Dotted path of the token-embedding layer report-word IG interpolates, or None.

    Looked for under the text encoder (``text_root``, ``model.layers.text``) when it is
    named, else in the whole model, in this order: the input embeddings of the shallowest
    Hugging Face model there (``get_input_embeddings()``); an ``nn.Embedding`` /
    ``nn.EmbeddingBag`` named ``*word_embeddings``; under a named text encoder, its only
    one. A Hugging Face ``embeddings`` block around the match is taken whole (see
    :func:`_embedding_block`). A model with several embeddings and no text encoder named
    is left to :meth:`ModelAdapter.detect_on_batch`, which sees which one reads the ids.
    """
    named = [(n, m) for n, m in module.named_modules() if is_under(n, text_root)]
    names = {id(m): n for n, m in module.named_modules()}
    for _name, m in sorted(named, key=lambda nm: nm[0].count(".") if nm[0] else -1):
        get = getattr(m, "get_input_embeddings", None)
        if not callable(get):
            continue
        try:
            emb = get()
        except (NotImplementedError, AttributeError):
            continue
        if isinstance(emb, TOKEN_EMBEDDINGS) and id(emb) in names:
            return _embedding_block(names[id(emb)], text_root)
    embeds = [n for n, m in named if isinstance(m, TOKEN_EMBEDDINGS)]
    words = [n for n in embeds if n.split(".")[-1] == "word_embeddings"]
    if words:
        return _embedding_block(words[0], text_root)
    if text_root and len(embeds) == 1:
        return _embedding_block(embeds[0], text_root)
    return None
