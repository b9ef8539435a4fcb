"""Scale out with Ray: batch video generation on Ray Data, online serving on Ray Serve.

- ``python -m packcache_vllm.scale.batch``: a Ray Data pipeline of video requests (JSONL) through
  N vLLM replicas with a PackCache policy; results per request (``--mp4``: also an MP4 each,
  ``movies``); re-runs skip finished requests.
- ``packcache_vllm.scale.serve``: an OpenAI-compatible Ray Serve deployment (vLLM's own OpenAI
  serving code in every replica) with the plugin on, and OpenAI's videos API on its ingress
  (``videos``); ``examples/ray_serve_config.yaml``.

Nothing here is imported by the plugin itself: Ray is needed only by these entry points.
"""
