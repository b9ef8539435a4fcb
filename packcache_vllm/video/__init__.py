"""Synthetic motion clips on a Lumos-1 frame grid, their tokens, and video files.

``scene``: deterministic scenes (textured background, moving objects, optional pan) rendered as
palette-index frames; ``tokens``: frames <-> Lumos-1 token streams and image-to-video prompts;
``render``: palette frames -> RGB -> MP4 / GIF / PNG strip; ``client``: ask `vllm serve` for a
video.
"""
