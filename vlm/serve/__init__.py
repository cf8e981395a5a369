"""``vlm serve``: one model and any number of indexes over HTTP.

    vlm.serve.requests   typed, validated request objects and the per-request limits
    vlm.serve.backend    model operations (caption, classify, embed, search); knows nothing of HTTP
    vlm.serve.batching   the dynamic batching queue in front of the backend
    vlm.serve.app        the HTTP routes (Flask, served by waitress)
    vlm.serve.ray_app    the same routes as a Ray Serve deployment (vlm serve-ray; the ray extra)

The backend's ``run_batch(kind, requests)`` is what both the batching queue and a Ray Serve
``@serve.batch`` method call.
"""
