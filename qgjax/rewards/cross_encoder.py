"""Cross-encoder relevance R(q, d) of a generated query and its source document.

reward `cross_encoder`: the logit of a one-label cross-encoder (sentence-transformers
convention), or log P(last label) of a multi-label one; for several targets (AQE gold
documents) the best. The model is any HF `*ForSequenceClassification` directory that
`qgjax.models.bert.load_cross_encoder` loads (BERT, MiniLM, RoBERTa, XLM-R); scoring runs
through the jitted, length-bucketed `score_pairs`, each batch split over every device, in the
compute dtype of `cross_encoder.dtype` / `attention_impl` ("auto": bf16 + cuDNN on a GPU, f32 on
a CPU; the classification head and its logit are f32 either way).
"""

from __future__ import annotations


from qgjax.errors import ConfigError
from qgjax.retrieval.dense import relevance_from_logits
from qgjax.rewards.base import RewardBatch, RewardContext, ScoreOutput, best_over_targets


class CrossEncoderScorer:

  def __init__(self, model, corpus, cfg):
    from qgjax.parallel.data_parallel import data_mesh, replicate
    self.module, params, self.tokenizer, self.info = model
    self.params = replicate(params, data_mesh())  # once: score_pairs finds them placed
    self.corpus, self.cfg = corpus, cfg
    self.max_len = min(int(cfg.max_len), int(self.info["max_seq_length"]))

  @property
  def model_config(self):
    """The cross-encoder's model config (its `dtype` and `attention_impl`: what the run reports)."""
    return self.module.config

  def __call__(self, batch: RewardBatch) -> ScoreOutput:
    from qgjax.models.bert import score_pairs
    texts, docs, counts = [], [], []
    wanted = sorted({d for t in batch.targets for d in t})
    contents = dict(zip(wanted, (doc.contents for doc in self.corpus.get_many(wanted))))
    for text, targets in zip(batch.texts, batch.targets):
      texts += [text] * len(targets)
      docs += [contents[d] for d in targets]
      counts.append(len(targets))
    logits = score_pairs(self.module, self.params, self.tokenizer, texts, docs,
                         batch_size=int(self.cfg.batch_size), max_len=self.max_len)
    return ScoreOutput({"cross_encoder": best_over_targets(relevance_from_logits(logits), counts)})


def build(ctx: RewardContext) -> CrossEncoderScorer:
  if "cross_encoder" not in ctx.cache:
    cfg = ctx.config.cross_encoder
    if not cfg.model:
      raise ConfigError("the cross_encoder reward needs config.cross_encoder.model: a local HF "
                        "*ForSequenceClassification directory (none ships with qgjax)")
    import dataclasses

    from qgjax.models.bert import CrossEncoder, load_cross_encoder
    from qgjax.parallel.backend import model_numerics

    dtype, attention = model_numerics(cfg, "config.cross_encoder")
    module, params, tokenizer, info = load_cross_encoder(cfg.model)   # f32 parameters; the head computes in f32
    module = CrossEncoder(dataclasses.replace(module.config, dtype=dtype, attention_impl=attention))
    ctx.cache["cross_encoder"] = CrossEncoderScorer((module, params, tokenizer, info), ctx.corpus, cfg)
  return ctx.cache["cross_encoder"]
