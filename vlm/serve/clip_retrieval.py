"""clip-retrieval's back-end protocol over the serve backend, so its ``ClipClient`` works unchanged.

    POST /knn-service    {"text" | "image" (base64) | "embedding_input", "num_images", "indice_name",
                          "modality": "image", "deduplicate", ...} -> [{"id", "similarity", "caption", "url"}]
    GET  /indices-list   ["index name", ...]
    POST /metadata       {"ids": [...], "indice_name"} -> [{"id", "metadata": {"caption", "url", "path"}}]

``image_url`` queries are refused (the server never fetches URLs). ``deduplicate`` and
``num_result_ids`` work as in clip-retrieval: the top ``num_result_ids`` hits (default
``num_images``) lose their near duplicates (vlm.index.dedup), then the first ``num_images`` are
answered, so a deduplicated answer can be shorter. ``use_safety_model``, ``use_violence_detector``,
``aesthetic_score``, ``aesthetic_weight`` and ``use_mclip`` are accepted and ignored (vlm has no
safety, violence or aesthetic model). ``url`` is this server's ``/image?path=...`` for the row.
"""

from __future__ import annotations

import urllib.parse

from vlm.serve.requests import Limits, RequestError, parse_search


def add_routes(app, backend, limits: Limits) -> None:
    from flask import jsonify, request

    def json_body() -> dict:
        data = request.get_json(force=True, silent=True)  # ClipClient sends JSON without a Content-Type
        if not isinstance(data, dict):
            raise RequestError("body", "not a JSON object")
        return data

    def row_meta(index, row: int) -> dict:
        path = index.paths[row]
        caption = index.rows.get("caption", [None] * len(index))[row]
        out = {"caption": caption or "", "url": request.host_url + "image?path=" + urllib.parse.quote(path),
               "path": path}
        ood = index.rows.get("ood")
        if ood is not None:
            out["ood"] = ood[row]
        return out

    @app.get("/indices-list")
    def indices_list():
        return jsonify(sorted(backend.indexes))

    @app.post("/knn-service")
    def knn_service():
        data = json_body()
        if data.get("image_url"):
            raise RequestError("image_url", "refused: this server never fetches URLs; send the image as base64 "
                                            "in 'image'")
        modality = data.get("modality") or "image"
        if modality != "image":
            raise RequestError("modality", f"{modality!r}: only 'image' is served (the indexes hold image "
                                           f"embeddings)")
        num_images = data.get("num_images") or 40
        query = {"k": data.get("num_result_ids") or num_images, "index": data.get("indice_name")}
        for ours, theirs in (("q", "text"), ("image", "image"), ("embedding", "embedding_input")):
            if data.get(theirs) is not None:
                query[ours] = data[theirs]
        try:
            if isinstance(num_images, bool) or not isinstance(num_images, int) or not 1 <= num_images <= limits.max_k:
                raise RequestError("num_images", f"{num_images!r}: must be a whole number 1..{limits.max_k}")
            req = parse_search(query, limits)
        except RequestError as e:  # name the field as the client sent it
            theirs = {"q": "text", "k": "num_result_ids" if "num_result_ids" in data else "num_images",
                      "embedding": "embedding_input", "index": "indice_name"}
            raise RequestError(theirs.get(e.field, e.field), str(e).split(": ", 1)[1], e.status) from None
        name, index = backend.index(req.index)
        hits = index.search_vectors(backend.query_vector(req), req.k)[0]
        if data.get("deduplicate") and len(hits) > 1:
            from vlm.index.dedup import near_duplicates_dropped

            keep = near_duplicates_dropped(index.vectors_of([index.row(h.path) for h in hits]))
            hits = [hits[i] for i in keep]
        hits = hits[:num_images]
        out = []
        for h in hits:
            row = index.row(h.path)
            meta = row_meta(index, row)
            out.append({"id": row, "similarity": h.score, "caption": meta["caption"], "url": meta["url"],
                        **({"ood": meta["ood"]} if "ood" in meta else {})})
        return jsonify(out)

    @app.post("/metadata")
    def metadata():
        data = json_body()
        ids = data.get("ids", [])
        if not isinstance(ids, list) or len(ids) > limits.max_k:
            raise RequestError("ids", f"expected a list of at most {limits.max_k} row ids")
        if not ids:
            return jsonify([])
        _, index = backend.index(data.get("indice_name"))
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(index):
                raise RequestError("ids", f"{i!r}: not a row id of this index (0..{len(index) - 1})")
        return jsonify([{"id": i, "metadata": row_meta(index, i)} for i in ids])
