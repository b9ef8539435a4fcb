"""OpenAI's videos API (``/v1/videos``) on `vllm serve`: ask for a video, get an MP4.

``routes``: the endpoint plugin and its HTTP routes; ``params``: one request, checked where it
enters; ``jobs``: the job store on disk; ``driver``: a job's generation through the server's
engine and its files. The checkpoint's video shapes, prompt and codec come from
``packcache_vllm.codec``.
"""
