"""OpenAI's videos API (``/v1/videos``) on `vllm serve` and Ray Serve: ask for a video, get an MP4.

``routes``: the endpoint plugin and its HTTP routes (one handler per route, which the Ray Serve
ingress of ``packcache_vllm.scale.videos`` reuses); ``service``: a server's jobs; ``params``: one
request, checked where it enters; ``engines``: the engine's own checks and the token stream;
``jobs``: the job store on disk; ``driver``: a job's generation and its files. The checkpoint's
video shapes, prompt and codec come from ``packcache_vllm.codec``.
"""
