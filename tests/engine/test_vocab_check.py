"""Offline ``LLM.generate``: a prompt id past the checkpoint's vocabulary is refused per request
(ValueError) before the engine sees it, with any ``--kv-policy`` (here none) and without a
tokenizer (vLLM's own id check needs one), and the engine goes on serving."""

from __future__ import annotations

import pytest

from tests.engine.conftest import BLOCK_SIZE, keep_alive

FRAMES = 2


@pytest.fixture(scope="module")
def tokenizerless_llm(tiny_model_dir, llm):
    """The shared engine's model and settings, with no tokenizer (as the batch replicas run)."""
    from vllm import LLM

    return keep_alive(
        LLM(
            str(tiny_model_dir),
            dtype="float32",
            enforce_eager=True,
            block_size=BLOCK_SIZE,
            kv_cache_memory_bytes=32 << 20,
            max_model_len=4096,
            enable_prefix_caching=False,
            seed=0,
            skip_tokenizer_init=True,
        )
    )


def greedy(per_frame: int):
    from vllm import SamplingParams

    return SamplingParams(
        temperature=0, max_tokens=FRAMES * per_frame, ignore_eos=True, detokenize=False
    )


def test_an_id_past_the_codebook_fails_its_request_and_the_engine_serves_on(
    tokenizerless_llm, llm, tiny_model_dir, video_prompts, per_frame
):
    import json

    config = json.loads((tiny_model_dir / "config.json").read_text())
    past_the_codebook = 65536 + config["codebook_size"]  # one past the embedding's last row
    good = video_prompts[0]  # image-to-video: its conditioning frame holds visual codes
    first_code = next(i for i, t in enumerate(good) if t >= 65536)
    bad = [*good[:first_code], past_the_codebook, *good[first_code + 1 :]]
    with pytest.raises(ValueError, match=f"token id {past_the_codebook} at position {first_code}"):
        tokenizerless_llm.generate(
            [{"prompt_token_ids": good}, {"prompt_token_ids": bad}],
            greedy(per_frame),
            use_tqdm=False,
        )
    (served,) = tokenizerless_llm.generate(
        [{"prompt_token_ids": good}], greedy(per_frame), use_tqdm=False
    )
    (expected,) = llm.generate([{"prompt_token_ids": good}], greedy(per_frame), use_tqdm=False)
    assert served.outputs[0].token_ids == expected.outputs[0].token_ids
