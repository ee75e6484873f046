"""LLM-judge relevance: an instruct LM's P(yes) against P(no) after a relevance prompt.

reward `llm_judge` = p_yes / (p_yes + p_no) = sigmoid(l_yes - l_no), where l_yes, l_no are the
next-token logits of the answer tokens after the prompt (DPO-QG, arXiv 2505.19307, rewards
queries with "a ranker or an LLM-based judge"); for several targets (AQE gold documents) the
best. In [0, 1], higher is better.

The prompt (config `llm_judge`): `template` with {query} and {document} (the document cut to
`max_doc_tokens`, the query to `max_query_tokens`) as the user turn of the tokenizer's chat
template, the assistant turn opened, so the next token is the first of the answer. `yes` / `no`
are the answer tokens' strings, each exactly one token: after a chat template's assistant
header ("<|im_start|>assistant\\n") the answer starts without a space, so "Yes" / "No"
(SmolLM2: ids 10539 / 5230); without a chat template the prompt ends in `answer_prefix` and the
tokens carry a leading space (" Yes" / " No").

Batching and sharding: prompts are sorted by length into length buckets (one compiled program
per bucket), left-padded to `batch_size` rows, and each batch is split by rows over a 1-D
("data",) mesh of every device of every process (`qgjax.parallel.data_parallel.RowParallel`:
rows padded to a multiple of the device count, parameters replicated); one jitted forward per
batch runs the LM head on the last position only.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from qgjax.errors import ConfigError
from qgjax.rewards.base import RewardBatch, RewardContext, ScoreOutput, best_over_targets

DEFAULT_TEMPLATE = ("Does the document answer the search query? Reply with Yes or No only.\n\n"
                    "Query: {query}\n\nDocument: {document}")
LENGTH_BUCKETS = (64, 128, 256, 512, 1024, 2048)


def answer_token_id(tokenizer: Any, text: str, field: str) -> int:
  """The id of `text` when it is exactly one token (else a ConfigError naming the config field)."""
  ids = tokenizer(text, add_special_tokens=False)["input_ids"]
  if len(ids) != 1:
    raise ConfigError(f"llm_judge.{field}={text!r} is {len(ids)} tokens ({ids}) in the judge's tokenizer; "
                      "it must be exactly one")
  return int(ids[0])


def _cut(tokenizer: Any, text: str, max_tokens: int) -> str:
  ids = tokenizer(text, add_special_tokens=False)["input_ids"]
  return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens], skip_special_tokens=True).strip()


class JudgePrompts:
  """(query, document) -> token ids of the judge's prompt (see the module docstring)."""

  def __init__(self, cfg: Any, tokenizer: Any):
    for field in ("{query}", "{document}"):
      if field not in cfg.template:
        raise ConfigError(f"llm_judge.template must contain {field}")
    self.cfg, self.tokenizer = cfg, tokenizer
    self.chat = bool(cfg.use_chat_template) and bool(getattr(tokenizer, "chat_template", None))

  def __call__(self, query: str, document: str) -> list[int]:
    c, tok = self.cfg, self.tokenizer
    text = c.template.format(query=_cut(tok, query, int(c.max_query_tokens)),
                             document=_cut(tok, document, int(c.max_doc_tokens)))
    if self.chat:
      messages = ([{"role": "system", "content": c.system}] if c.system else []) + [{"role": "user", "content": text}]
      out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
      ids = out["input_ids"] if hasattr(out, "keys") else out
    else:
      ids = tok((c.system + "\n\n" if c.system else "") + f"{text}\n{c.answer_prefix}", add_special_tokens=True)["input_ids"]
    return [int(i) for i in ids]


def judge_logits_fn(module: Any, answer_ids: tuple[int, int]):
  """(params, tokens int32[B, T] left-padded, mask bool[B, T]) -> f32[B, 2]: the last position's
  logits of the (yes, no) tokens."""
  from qgjax.models.decoder import positions_from_mask

  ids = np.asarray(answer_ids, np.int32)

  def fn(params, tokens, mask):
    logits, _ = module.apply({"params": params}, tokens, positions_from_mask(mask), mask, return_last_only=True)
    return logits[:, -1, :][:, ids].astype(np.float32)

  return fn


def yes_probability(pair_logits: np.ndarray) -> np.ndarray:
  """f32[N, 2] (yes, no) logits -> f64[N] p_yes / (p_yes + p_no) = sigmoid(l_yes - l_no)."""
  d = np.asarray(pair_logits, np.float64)
  return 1.0 / (1.0 + np.exp(d[:, 1] - d[:, 0]))


class LLMJudgeScorer:
  """Scores (text, target documents) with the judge; `num_compiles` counts compiled programs."""

  def __init__(self, model: tuple[Any, Any, Any], corpus: Any, cfg: Any):
    from qgjax.parallel.data_parallel import RowParallel, data_mesh, replicate

    self.module, params, self.tokenizer = model
    self.corpus, self.cfg = corpus, cfg
    self.prompts = JudgePrompts(cfg, self.tokenizer)
    self.answer_ids = (answer_token_id(self.tokenizer, cfg.yes, "yes"), answer_token_id(self.tokenizer, cfg.no, "no"))
    self.batch_size, self.max_len = int(cfg.batch_size), int(cfg.max_len)
    self.buckets = sorted({b for b in LENGTH_BUCKETS if b < self.max_len} | {self.max_len})
    self.pad_id = int(self.module.config.pad_token_id or 0)
    self.num_compiles = 0
    fn = judge_logits_fn(self.module, self.answer_ids)

    def counted(*args):
      self.num_compiles += 1   # runs once per trace
      return fn(*args)

    self._forward = RowParallel(counted, data_mesh())
    self.params = replicate(params, self._forward.mesh)

  @property
  def model_config(self):
    """The judge's DecoderConfig (its `dtype` and `attention_impl`: what the run reports)."""
    return self.module.config

  def pair_logits(self, token_lists: Sequence[Sequence[int]]) -> np.ndarray:
    """Prompts (token ids) -> f32[N, 2] (yes, no) logits, in input order."""
    from qgjax.models.text_encoding import plan_batches
    from qgjax.sampling.batching import pad_prompts

    lengths = [len(t) for t in token_lists]
    if max(lengths) > self.max_len:
      raise ConfigError(f"a judge prompt has {max(lengths)} tokens > llm_judge.max_len={self.max_len}; "
                        "lower llm_judge.max_doc_tokens / max_query_tokens or raise max_len")
    out = np.zeros((len(token_lists), 2), np.float32)
    for length, rows in plan_batches(lengths, self.batch_size, self.buckets):
      batch = pad_prompts([token_lists[r] for r in rows], length, self.batch_size, self.pad_id, "left")
      out[rows] = self._forward(self.params, batch.tokens, batch.mask)[:len(rows)]
    return out

  def __call__(self, batch: RewardBatch) -> ScoreOutput:
    wanted = sorted({d for t in batch.targets for d in t})
    contents = dict(zip(wanted, (doc.contents for doc in self.corpus.get_many(wanted))))
    prompts, counts = [], []
    for text, targets in zip(batch.texts, batch.targets):
      prompts += [self.prompts(text, contents[d]) for d in targets]
      counts.append(len(targets))
    p_yes = yes_probability(self.pair_logits(prompts))
    return ScoreOutput({"llm_judge": best_over_targets(p_yes, counts)})


def build(ctx: RewardContext) -> LLMJudgeScorer:
  if "llm_judge" not in ctx.cache:
    from qgjax.models.decoder import DecoderLM
    from qgjax.models.registry import load_decoder
    from qgjax.parallel.backend import model_numerics

    cfg = ctx.config.llm_judge
    if not cfg.model:
      raise ConfigError("the llm_judge reward needs config.llm_judge.model: an instruct decoder "
                        "(a registry name such as smollm2-135m-instruct, a GGUF file or an HF directory)")
    dtype, attention = model_numerics(cfg, "config.llm_judge")
    module, params, tokenizer = load_decoder(cfg.model, dtype="float32", attention_impl=attention)
    module = DecoderLM(module.config.replace(dtype=dtype))   # f32 parameters, `dtype` compute, f32 logits
    ctx.cache["llm_judge"] = LLMJudgeScorer((module, params, tokenizer), ctx.corpus, cfg)
  return ctx.cache["llm_judge"]
