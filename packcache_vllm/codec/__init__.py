"""Pixels <-> visual codes, and video prompts from text: what a video API needs from a checkpoint.

Pure Python + torch (+ transformers for the Emu3 VQ and tokenizers); no vLLM.

API::

    from packcache_vllm.codec.spec import video_shape, codec_for, checkpoint_video, VideoShape
    from packcache_vllm.codec.prompts import video_prompt
    from packcache_vllm.codec.frames import frames_ids, decode_frame_ids, DecodedFrames

    shape = video_shape(model_dir, size="192x128", seconds="2")  # ValueError "size"/"seconds ..."
    codec = codec_for(model_dir, shape.cell_pixels)              # a VisualCodec
    first = codec.encode(image)                # [H, W, 3] uint8 -> [1, rows, cols] int64 codes
    ids = video_prompt(model_dir, caption, shape, first)  # ValueError "caption ..."/"condition ..."
    max_tokens = (shape.num_frames - len(first)) * core.layout.tokens_per_frame(rows, cols)
    frames = decode_frame_ids(generated_ids, shape.rows, shape.cols, codec.codebook_size,
                              strict=False)
    rgb = codec.decode_frames(frames)          # [N, H, W, 3] uint8

``spec.py`` documents the config.json keys (``packcache_codec``, ``video_fps``, ``video_prompt``),
``base.py`` the ``VisualCodec`` interface and ``CodecGeometry``, ``prompts.py`` the prompt
templates. Codecs built in: ``palette.PaletteCodec`` (the synthetic scenes, exact) and
``emu3_vq.Emu3VQCodec`` (transformers' ``Emu3VQVAE``, a learned VQ-VAE for images and video).
``model.factory.build_tiny_lumos(..., codec="palette" | "emu3-vq")`` writes tiny checkpoints with
either.

Plugging in Lumos-1's own tokenizer (NVIDIA Cosmos-Tokenizer-DV4x8x8, not installable here):
subclass ``base.VisualCodec`` with ``geometry = base.COSMOS_DV4X8X8`` and ``codebook_size =
64000``; in ``encode_clip`` run the Cosmos discrete video encoder on pixels in [-1, 1] as
``[1, 3, N, H, W]`` (N = 1 + 4k frames; an image is N = 1) and return its FSQ indices
``[T, H / 8, W / 8]``; in ``decode_codes`` run its decoder and map [-1, 1] back to uint8.
Lumos-1's visual id of a Cosmos index is ``65536 + index`` (``--vis_tok_start 65536``), which is
what ``frames.code_ids`` does. Then give the checkpoint a ``packcache_codec`` kind for it and a
branch in ``spec.codec_for``; sizes and durations already follow the Cosmos geometry when
config.json has no ``packcache_codec``.
"""
