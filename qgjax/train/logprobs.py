"""Sequence log-probabilities of completions given prompts, for decoder-only and encoder-decoder LMs.

Batch layout (what `qgjax.train.data` produces): prompts int32[B, Tp] LEFT-padded, completions
int32[B, Tc] RIGHT-padded (ending in EOS), bool masks beside them. The completion then starts
at the same column Tp for every row, so "the logits that predict the completion" are a static
slice and only Tc (not Tp + Tc) rows of the vocabulary projection are computed.

Decoder-only:
  completion_logprobs(fns, prompt, pmask, completion, cmask)   one packed pass [prompt; completion]
  shared_prompt_logprobs(fns, prompt, pmask, completions, cmask, prompt_embeds=None)
      k completions per prompt (rows [kB, Tc], row j continues prompt j % B): the prompt runs
      ONCE, filling a KV cache (gradients flow through it); the kB completions then run as one
      batch that attends to the cached prompt. The first completion token is scored from the
      prompt pass's last position. Cost: B*Tp + kB*Tc token-passes instead of kB*(Tp + Tc).
      prompt_embeds [B, Tp, D] replaces the prompt's token embeddings (soft prompts, ReadQG);
      also returns the prompt's final-norm hidden states [B, Tp, D]; with_states=True also the
      states that predict each completion token [kB, Tc, D] (ReadQG's margin calibration).
  pair_logprobs(fns, prompt, pmask, chosen, cmask_c, rejected, cmask_r, share_prompt=True, prefix=None)
      DPO's chosen and rejected share the prompt (shared_prompt_logprobs with k = 2);
      share_prompt=False packs [prompt; completion] for both (the reference for the test).
      prefix int32[Pp]: the common start of every prompt, run once per batch (the prompts are the
      rests: `split_common_prefix`); a few-shot prompt's ~310 shared tokens then cost one row.
Encoder-decoder:
  encdec_decode_logprobs(fns, enc, smask, completion, cmask, with_states=False)  teacher-force
      against encoder states; with_states=True also returns the decoder's final-norm states [B, Tc, D]
  encdec_completion_logprobs(fns, src, smask, completion, cmask)  encode, teacher-force
  encdec_pair_logprobs(...)    encode the prompt once, decode chosen and rejected against it

`fns` bind a model to its parameters inside the traced loss (see `DecoderFns`, `EncDecFns`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class SeqLogprobs(NamedTuple):
  token: jax.Array   # f32[B, Tc] log p of each completion token (0 where masked)
  mask: jax.Array    # f32[B, Tc]
  total: jax.Array   # f32[B] sum over the completion
  count: jax.Array   # f32[B] number of completion tokens

  @property
  def mean(self) -> jax.Array:
    """f32[B] per-token mean (length-normalised) log-prob."""
    return self.total / jnp.maximum(self.count, 1.0)


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """logits [B, T, V] (any float dtype), targets int[B, T] -> f32[B, T] log softmax at the target."""
  logits = logits.astype(jnp.float32)
  picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def _seq(token_lp: jax.Array, mask: jax.Array) -> SeqLogprobs:
  m = mask.astype(jnp.float32)
  tok = token_lp * m
  return SeqLogprobs(tok, m, jnp.sum(tok, axis=-1), jnp.sum(m, axis=-1))


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """bool[B, T] -> int32[B, T]: cumsum(mask) - 1, clipped at 0 (left padding gets position 0)."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


# ------------------------------------------------------------------------------------------------
# Decoder-only


@dataclasses.dataclass(frozen=True)
class DecoderFns:
  """A decoder LM bound to its parameters.

  forward(tokens, positions, kv_mask, cache=None, cache_index=0, embeds=None) -> (hidden [B, T, D], cache)
      final-norm hidden states (logits are not needed here; XLA drops the unused ones);
      embeds [B, T, D] replaces the token embeddings (tokens may then be None)
  logits(hidden [B, T, D]) -> f32[B, T, V]
  init_cache(batch, max_len) -> an empty KV cache
  repeat_cache(cache, n) -> the cache with every row repeated n times ([b0..bB, b0..bB, ...])
  embed(tokens int[B, T]) -> token embeddings [B, T, D] (compute dtype)
  """
  forward: Callable[..., tuple[jax.Array, Any]]
  logits: Callable[[jax.Array], jax.Array]
  init_cache: Callable[[int, int], Any]
  repeat_cache: Callable[[Any, int], Any]
  embed: Callable[[jax.Array], jax.Array] | None = None


def decoder_fns(module: Any, variables: Any, apply: Callable | None = None) -> DecoderFns:
  """DecoderFns for `qgjax.models.decoder.DecoderLM` and its variables ({"params": ...}).

  `apply(*args, method=None, **kwargs)` replaces `module.apply(variables, ...)` (e.g. LoRA's
  unmerged forward).
  """
  from qgjax.models import decoder as dec

  apply = apply or (lambda *a, **k: module.apply(variables, *a, **k))

  def forward(tokens, positions, kv_mask, cache=None, cache_index=0, embeds=None):
    _, new_cache, hidden = apply(tokens, positions, kv_mask, cache, cache_index, embeds=embeds, return_hidden=True)
    return hidden, new_cache

  def embed(tokens):
    return apply(tokens, method=dec.DecoderLM.embed)

  def logits(hidden):
    return apply(hidden, method=dec.DecoderLM.logits)

  def init_cache(batch, max_len):
    return dec.init_cache(module.config, batch, max_len)

  def repeat_cache(cache, n):
    # KVCache.k / .v are [layers, batch, slots, kv_heads, head_dim].
    return jax.tree.map(lambda x: jnp.concatenate([x] * n, axis=1), cache)

  return DecoderFns(forward, logits, init_cache, repeat_cache, embed)


def completion_logprobs(fns: DecoderFns, prompt: jax.Array, prompt_mask: jax.Array, completion: jax.Array,
                        completion_mask: jax.Array) -> SeqLogprobs:
  """log p(completion | prompt) with one packed pass over [prompt; completion] ([B, Tp + Tc])."""
  tp, tc = prompt.shape[1], completion.shape[1]
  tokens = jnp.concatenate([prompt, completion], axis=1)
  mask = jnp.concatenate([prompt_mask, completion_mask], axis=1).astype(bool)
  hidden, _ = fns.forward(tokens, positions_from_mask(mask), mask)
  # Column t predicts token t+1: columns Tp-1 .. Tp+Tc-2 predict the completion.
  logits = fns.logits(hidden[:, tp - 1: tp + tc - 1])
  return _seq(token_logprobs(logits, completion), completion_mask)


def shared_prompt_logprobs(fns: DecoderFns, prompt: jax.Array | None, prompt_mask: jax.Array, completions: jax.Array,
                           completion_mask: jax.Array, *, prompt_embeds: jax.Array | None = None,
                           with_states: bool = False, prefix: jax.Array | None = None) -> tuple:
  """log p(completion_j | prompt_{j mod B}) for k*B completions of B prompts, the prompt run once.

  prompt int32[B, Tp] left-padded (None when prompt_embeds [B, Tp, D] is given), prompt_mask
  bool[B, Tp], completions int32[kB, Tc] right-padded -> (SeqLogprobs [kB], the prompt's
  final-norm hidden states [B, Tp, D]) [+ with_states: the final-norm states [kB, Tc, D] that
  predict each completion token, i.e. [the prompt's last ; completion[:-1]], as a teacher-forced
  encoder-decoder's decoder states].
  prefix: int32[Pp], tokens that come before every prompt (a few-shot prompt's common start,
  split off by `split_common_prefix`): run once for the batch, every prompt attends to it
  (gradients flow through it); `prompt` is then each prompt's rest.
  """
  b, tp = prompt_mask.shape
  rows, tc = completions.shape
  if rows % b:
    raise ValueError(f"{rows} completions do not split over {b} prompts")
  k = rows // b
  pmask = prompt_mask.astype(bool)
  cmask = completion_mask.astype(bool)
  pp = 0 if prefix is None else prefix.shape[0]
  if prefix is None:
    cache = fns.init_cache(b, tp + tc)
  else:   # the prefix's keys/values once (the same on every device: no collective), then one copy per prompt
    from qgjax.models.layers import logical_constraint

    one = jnp.arange(pp + tp + tc)[None, :] < pp
    replicated = lambda x: logical_constraint(x, (None,) * x.ndim)
    _, cache = fns.forward(replicated(prefix[None].astype(jnp.int32)), jnp.arange(pp, dtype=jnp.int32)[None, :],
                           one, jax.tree.map(replicated, fns.init_cache(1, pp + tp + tc)), 0)
    cache = jax.tree.map(lambda x: jnp.broadcast_to(replicated(x), x.shape[:1] + (b,) + x.shape[2:]), cache)
    pmask = jnp.concatenate([jnp.ones((b, pp), bool), pmask], axis=1)      # [B, Pp + Tp] from here on
  kv_prompt = jnp.concatenate([pmask, jnp.zeros((b, tc), bool)], axis=1)
  hidden_p, cache = fns.forward(prompt, positions_from_mask(pmask)[:, pp:], kv_prompt, cache, pp,
                                embeds=prompt_embeds)
  first_logits = fns.logits(hidden_p[:, -1:])                             # predicts completion[:, 0]
  cache = fns.repeat_cache(cache, k)
  n_prompt = jnp.sum(pmask, axis=1, dtype=jnp.int32)
  positions = jnp.concatenate([n_prompt] * k)[:, None] + jnp.arange(tc, dtype=jnp.int32)[None, :]
  kv = jnp.concatenate([jnp.concatenate([pmask] * k), cmask], axis=1)
  hidden_c, _ = fns.forward(completions, positions, kv, cache, pp + tp)
  first = token_logprobs(jnp.concatenate([first_logits] * k), completions[:, :1])
  rest = token_logprobs(fns.logits(hidden_c[:, :-1]), completions[:, 1:])
  lp = _seq(jnp.concatenate([first, rest], axis=1), cmask)
  if with_states:
    states = jnp.concatenate([jnp.concatenate([hidden_p[:, -1:]] * k), hidden_c[:, :-1]], axis=1)
    return lp, hidden_p, states
  return lp, hidden_p


def pair_logprobs(fns: DecoderFns, prompt: jax.Array, prompt_mask: jax.Array, chosen: jax.Array,
                  chosen_mask: jax.Array, rejected: jax.Array, rejected_mask: jax.Array,
                  share_prompt: bool = True, prefix: jax.Array | None = None) -> tuple[SeqLogprobs, SeqLogprobs]:
  """(log p(chosen | prompt), log p(rejected | prompt)); the prompt runs once when share_prompt.
  prefix int32[Pp]: every prompt's common start, split off (shared_prompt_logprobs; share_prompt only)."""
  b = prompt.shape[0]
  if prefix is not None and not share_prompt:
    raise ValueError("a common prompt prefix needs share_prompt=True")
  if chosen.shape != rejected.shape:
    raise ValueError(f"chosen {chosen.shape} and rejected {rejected.shape} must be padded alike")
  completions = jnp.concatenate([chosen, rejected], axis=0)
  cmask = jnp.concatenate([chosen_mask, rejected_mask], axis=0).astype(bool)
  if not share_prompt:
    both = completion_logprobs(fns, jnp.concatenate([prompt] * 2), jnp.concatenate([prompt_mask] * 2),
                               completions, cmask)
  else:
    both, _ = shared_prompt_logprobs(fns, prompt, prompt_mask, completions, cmask, prefix=prefix)
  split = lambda x: (x[:b], x[b:])
  c, r = zip(*(split(x) for x in both))
  return SeqLogprobs(*c), SeqLogprobs(*r)


# ------------------------------------------------------------------------------------------------
# Encoder-decoder


@dataclasses.dataclass(frozen=True)
class EncDecFns:
  """An encoder-decoder LM bound to its parameters.

  encode(src, src_mask) -> enc [B, S, D]
  decode(enc, src_mask, dec_inputs, dec_mask) -> f32 logits [B, T, V] (teacher forcing)
  decoder_start_id: first decoder input (T5: the pad id 0)
  decode_states(enc, src_mask, dec_inputs, dec_mask) -> (logits, final-norm decoder states [B, T, D])
  """
  encode: Callable[[jax.Array, jax.Array], jax.Array]
  decode: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
  decoder_start_id: int = 0
  decode_states: Callable[..., tuple[jax.Array, jax.Array]] | None = None


def shift_right(targets: jax.Array, start_id: int) -> jax.Array:
  """Decoder inputs for teacher forcing: [start, y_0, ..., y_{T-2}]."""
  start = jnp.full(targets.shape[:1] + (1,), start_id, targets.dtype)
  return jnp.concatenate([start, targets[:, :-1]], axis=1)


def encdec_decode_logprobs(fns: EncDecFns, enc: jax.Array, src_mask: jax.Array, completion: jax.Array,
                           completion_mask: jax.Array, with_states: bool = False):
  """log p(completion | encoder states) by teacher forcing -> SeqLogprobs [+ with_states: the decoder's
  final-norm states [B, Tc, D], position t predicting completion token t]."""
  dec_in = shift_right(completion, fns.decoder_start_id)
  dec_mask = shift_right(completion_mask.astype(jnp.int32), 1).astype(bool)
  if with_states:
    if fns.decode_states is None:
      raise ValueError("with_states=True needs EncDecFns.decode_states")
    logits, states = fns.decode_states(enc, src_mask, dec_in, dec_mask)
    return _seq(token_logprobs(logits, completion), completion_mask), states
  logits = fns.decode(enc, src_mask, dec_in, dec_mask)
  return _seq(token_logprobs(logits, completion), completion_mask)


def encdec_completion_logprobs(fns: EncDecFns, src: jax.Array, src_mask: jax.Array, completion: jax.Array,
                               completion_mask: jax.Array) -> SeqLogprobs:
  """Encode the prompt, teacher-force the completion."""
  return encdec_decode_logprobs(fns, fns.encode(src, src_mask), src_mask, completion, completion_mask)


def encdec_pair_logprobs(fns: EncDecFns, src: jax.Array, src_mask: jax.Array, chosen: jax.Array,
                         chosen_mask: jax.Array, rejected: jax.Array,
                         rejected_mask: jax.Array) -> tuple[SeqLogprobs, SeqLogprobs]:
  """The prompt is encoded once; chosen and rejected decode against the same encoder states."""
  b = src.shape[0]
  enc = fns.encode(src, src_mask)
  both = encdec_decode_logprobs(fns, jnp.concatenate([enc] * 2), jnp.concatenate([src_mask] * 2),
                                jnp.concatenate([chosen, rejected]), jnp.concatenate([chosen_mask, rejected_mask]))
  c, r = zip(*((x[:b], x[b:]) for x in both))
  return SeqLogprobs(*c), SeqLogprobs(*r)


def t5_fns(module: Any, variables: Any, prefix: Callable[[jax.Array, jax.Array], tuple] | None = None) -> EncDecFns:
  """EncDecFns for `qgjax.models.t5.T5Model`.

  `prefix(embeds [B, S, D], mask [B, S]) -> (embeds, mask)` edits the encoder input embeddings
  (soft prompts); the encoder then runs on embeddings instead of token ids.
  """
  from qgjax.models.t5 import T5Model

  def encode(src, src_mask):
    if prefix is None:
      return module.apply(variables, src, src_mask, method=T5Model.encode)
    embeds = module.apply(variables, src, method=T5Model.embed)
    embeds, mask = prefix(embeds, src_mask)
    return module.apply(variables, None, mask, embeds=embeds, method=T5Model.encode)

  def decode(enc, enc_mask, dec_in, dec_mask):
    logits, _ = module.apply(variables, dec_in, enc, enc_mask, dec_mask=dec_mask, method=T5Model.decode)
    return logits

  def decode_states(enc, enc_mask, dec_in, dec_mask):
    logits, _, states = module.apply(variables, dec_in, enc, enc_mask, dec_mask=dec_mask, return_hidden=True,
                                     method=T5Model.decode)
    return logits, states

  return EncDecFns(encode, decode, int(module.config.decoder_start_token_id), decode_states)


def split_common_prefix(prompts: list, min_tokens: int = 16) -> tuple[list[int], list]:
  """Token-id prompts -> (their longest common start, each prompt's rest); every rest keeps at
  least one token. ([], prompts) when the common start is shorter than `min_tokens`."""
  if not prompts:
    return [], prompts
  from qgjax.sampling.prompts import common_start

  n = min(len(common_start(prompts)), min(len(p) for p in prompts) - 1)
  if n < min_tokens:
    return [], prompts
  return [int(t) for t in prompts[0][:n]], [p[n:] for p in prompts]

