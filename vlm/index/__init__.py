"""Image-text retrieval over a user's own collection: ``vlm index``, ``vlm search``, ``vlm serve``.

    >>> import vlm.index
    >>> vlm.index.build(["photos/"], "photos.index")            # embeddings, metadata, faiss index
    >>> vlm.index.open("photos.index").search(text="a dog on a beach", k=5)
    [Hit(rank=1, path='/home/me/photos/beach.jpg', score=0.31), ...]

The contrastive head's cosine similarity (CLIP, Radford et al. 2021) over an incremental,
crash-safe store of L2-normalised image embeddings with a faiss index (Johnson et al. 2019).
Pieces: ``sources`` (what is read), ``embed`` (DataLoader + writer thread), ``store`` (the
directory layout), ``ann`` (index choice and recall), ``builder``, ``search``, ``server``.
See docs/search.md.
"""

from __future__ import annotations

__all__ = ["build", "open", "Hit", "Index", "IndexFormatError", "BuildReport"]


def __getattr__(name):
    if name == "fingerprint":
        from vlm.io.fingerprint import fingerprint

        return fingerprint
    if name in ("build", "BuildReport"):
        from vlm.index import builder as _b

        return getattr(_b, name) if name != "build" else _b.build
    if name in ("Hit", "Index", "IndexFormatError"):
        from vlm.index import search as _s

        return getattr(_s, name)
    if name == "open":
        from vlm.index.search import open_index

        return open_index
    raise AttributeError(f"module 'vlm.index' has no attribute {name!r}")
