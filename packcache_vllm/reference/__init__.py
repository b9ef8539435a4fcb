"""Dense PyTorch Lumos-1 with an explicit PackCache generation loop: the oracle.

Independent of vLLM (never imports it). Loads a Lumos-1 checkpoint directory (config.json and
safetensors, any dtype; run in float32 by default) and generates greedily, one token at a time
after a prefill of the prompt, with a KV cache it evicts explicitly:

* The cache holds, per layer, every kept token's QK-normed key and its value, plus (shared by the
  layers) the token's logical index. A token's K/V, once computed, never change: they were
  computed under whatever was kept at that time, as in the engine.
* After every token, when the number n of complete generated frames grows, a ``KeepPolicy`` says
  which frame-relative offsets of each complete generated frame stay and how many of the oldest
  frames were dropped whole (Δ); everything else of those frames leaves the cache. Anchors (the
  prompt) and the current frame always stay.
* Positions are Lumos-1's MM-RoPE positions of the logical index, rebased: ``FrameLayout.positions
  (index, Δ)`` moves every generated token's t back by ``t_stride * Δ``. Two equivalent ways
  (``RebaseMode``): keys stored pre-RoPE and rotated at their current rebased positions every step
  (the definition), or keys stored rotated at un-rebased positions with the anchor keys' t channels
  rotated by ``+t_stride * Δ`` when frames are dropped (what an engine with rotated keys does).

Model (Lumos-1 = Chameleon decoder + QK-norm + GQA + MM-RoPE; lumos-checkpoint-format.md):
embed -> layers -> RMSNorm -> lm_head. A layer is pre-norm
``h = x + attn(ln1(x)); out = h + mlp(ln2(h))``, or with ``swin_norm``
``h = x + ln1(attn(x)); out = h + ln2(mlp(h))``. QK-norm is a LayerNorm over head_dim (eps 1e-5,
no affine) times/plus weights ``[model_parallel_size, head_dim]`` shared by each shard's heads.

weights.py   the config (``core.lumos_schema``) and a checkpoint's tensors, checked, per layer
forward.py   the blocks: RMSNorm, QK-norm, MLP, q/k/v projection, attention (and its probe)
cache.py     one request's KV cache, and ``RebaseMode``
policies.py  what stays when a frame completes: ``NoEviction``, ``PackCachePolicy``
session.py   one request's generation loop: prefill, feed, eviction, time rebase
model.py     ``ReferenceVideoModel``: layers over the cache, entry points, greedy generation
"""

from packcache_vllm.reference.cache import KVCache, RebaseMode
from packcache_vllm.reference.forward import mlp, project_qkv, qk_norm, rms_norm
from packcache_vllm.reference.model import ReferenceVideoModel
from packcache_vllm.reference.policies import KeepPolicy, KeptHistory, NoEviction, PackCachePolicy
from packcache_vllm.reference.session import ReferenceSession
from packcache_vllm.reference.weights import (
    LayerWeights,
    ReferenceConfig,
    check_tensors,
    load_checkpoint_tensors,
)

__all__ = [
    "KVCache",
    "KeepPolicy",
    "KeptHistory",
    "LayerWeights",
    "NoEviction",
    "PackCachePolicy",
    "RebaseMode",
    "ReferenceConfig",
    "ReferenceSession",
    "ReferenceVideoModel",
    "check_tensors",
    "load_checkpoint_tensors",
    "mlp",
    "project_qkv",
    "qk_norm",
    "rms_norm",
]
