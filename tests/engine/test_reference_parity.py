"""vLLM's Lumos-1 (plugin model, no eviction) generates exactly the dense reference's tokens.

Float32 greedy decoding of several frames for three requests of different shapes in one batch:
image-to-video and text-to-video prompts with different text lengths, so every request has its
own frame start and its own MM-RoPE positions.
"""

from __future__ import annotations

import pytest

NUM_FRAMES = 4


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    from packcache_vllm.reference import ReferenceVideoModel

    return ReferenceVideoModel.from_pretrained(tiny_model_dir)


def test_batched_vllm_tokens_equal_reference(llm, reference, video_prompts):
    from vllm import SamplingParams

    layouts = [reference.layout_for(prompt) for prompt in video_prompts]
    assert {layout.num_anchor_frames for layout in layouts} == {0, 1}, "need i2v and t2v prompts"
    assert len({layout.frame_start for layout in layouts}) == len(layouts)
    num_tokens = NUM_FRAMES * layouts[0].tokens_per_frame

    params = SamplingParams(
        temperature=0.0, max_tokens=num_tokens, ignore_eos=True, detokenize=False
    )
    outputs = llm.generate([{"prompt_token_ids": p} for p in video_prompts], params, use_tqdm=False)

    for prompt, layout, output in zip(video_prompts, layouts, outputs, strict=True):
        expected = reference.generate(prompt, layout, num_tokens, policy=None).token_ids
        generated = tuple(output.outputs[0].token_ids)
        first_diff = next(
            (i for i, (a, b) in enumerate(zip(generated, expected, strict=False)) if a != b), None
        )
        assert generated == expected, f"request {output.request_id}: first mismatch at {first_diff}"


def test_positions_matter(llm, video_prompts):
    """Teeth: the same prompt with its text shifted by one token (different frame start and
    MM-RoPE offsets) must change the generation, or the parity test above proves little."""
    from vllm import SamplingParams

    prompt = video_prompts[0]
    shifted = [prompt[0], *prompt]
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True, detokenize=False)
    a, b = llm.generate(
        [{"prompt_token_ids": p} for p in (prompt, shifted)], params, use_tqdm=False
    )
    assert a.outputs[0].token_ids != b.outputs[0].token_ids
