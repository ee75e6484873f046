"""BERT-family encoders (BERT / MiniLM, RoBERTa / XLM-RoBERTa) with bi-encoder and cross-encoder heads.

  EncoderConfig.from_hf(config_json)        -> config (model_type bert | roberta | xlm-roberta)
  BertEncoder(config)(tokens, mask)          -> hidden f32[B, T, D]
  BiEncoder(config, pooling, normalize)      -> emb f32[B, D]     (sentence-transformers semantics)
  CrossEncoder(config)(tokens, mask, tt)     -> logits f32[B, num_labels]  (*ForSequenceClassification)
  load_bi_encoder / load_cross_encoder       -> (module, params, tokenizer, info)  from a local dir
  save_bi_encoder_st / save_cross_encoder_hf -> directories sentence-transformers / transformers load
  encode_texts / score_pairs                 -> batched, length-bucketed, jitted inference (numpy out)

`params` are the `params` collection (plain arrays): `module.apply({"params": params}, ...)`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qgjax.errors import CheckpointMismatchError, ConfigError, InputError
from qgjax.models.dropout import Dropout
from qgjax.models.encoder_layers import (Dense, Embed, HFTensor, LayerNorm, abstract_param_shapes, activation,
                                         as_dtype, attention, merge_heads, params_from_hf, params_to_hf, split_heads,
                                         unfreeze)
from qgjax.models.hf_checkpoint import read_safetensors_dir, save_tokenizer, write_safetensors_dir
from qgjax.models.registry import resolve
from qgjax.models.text_encoding import encode_texts, score_pairs  # noqa: F401  (re-exported)

ROBERTA_TYPES = ("roberta", "xlm-roberta")
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Architecture of a BERT-family encoder (field names follow HF `BertConfig` where they can)."""
  model_type: str = "bert"            # "bert" | "roberta" | "xlm-roberta"
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  classifier_dropout: float | None = None
  num_labels: int = 1
  dtype: str = "float32"              # computation dtype
  attention_impl: str = "auto"        # "auto" (cuDNN on a GPU in bf16/f16, else XLA) | "xla" | "cudnn"
  param_dtype: str = "float32"
  scan_layers: bool = False           # one scanned layer with params stacked on a "layers" axis
  remat: bool = False                 # rematerialise each layer in the backward pass

  @property
  def is_roberta(self) -> bool:
    return self.model_type in ROBERTA_TYPES

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf(cls, config_json: str | Mapping[str, Any], **overrides) -> EncoderConfig:
    """HF `config.json` (path, directory or dict) -> EncoderConfig; `overrides` replace fields."""
    if isinstance(config_json, str):
      path = os.path.join(config_json, "config.json") if os.path.isdir(config_json) else config_json
      with open(path) as f:
        c = json.load(f)
    else:
      c = dict(config_json)
    model_type = c.get("model_type", "bert")
    if model_type not in ("bert",) + ROBERTA_TYPES:
      raise ConfigError(f"unsupported encoder model_type {model_type!r}; supported: bert, roberta, xlm-roberta")
    if c.get("position_embedding_type", "absolute") != "absolute":
      raise ConfigError(f"unsupported position_embedding_type {c['position_embedding_type']!r} (only 'absolute')")
    activation(c.get("hidden_act", "gelu"))  # validates the name
    # transformers omits id2label from config.json when it has its default of 2 labels.
    num_labels = c.get("num_labels", len(c["id2label"]) if "id2label" in c else 2)
    fields = dict(
        model_type=model_type, vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
        intermediate_size=c["intermediate_size"], hidden_act=c.get("hidden_act", "gelu"),
        max_position_embeddings=c.get("max_position_embeddings", 512), type_vocab_size=c.get("type_vocab_size", 2),
        layer_norm_eps=c.get("layer_norm_eps", 1e-12),
        pad_token_id=c.get("pad_token_id", 1 if model_type in ROBERTA_TYPES else 0) or 0,
        hidden_dropout=c.get("hidden_dropout_prob", 0.1), attention_dropout=c.get("attention_probs_dropout_prob", 0.1),
        classifier_dropout=c.get("classifier_dropout"), num_labels=num_labels)
    fields.update(overrides)
    return cls(**fields)

  def to_hf(self, architecture: str | None = None) -> dict[str, Any]:
    """config.json dict that `transformers` reads back into the same architecture."""
    default_arch = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel"}[self.model_type]
    c = {
        "architectures": [architecture or default_arch], "model_type": self.model_type,
        "vocab_size": self.vocab_size, "hidden_size": self.hidden_size, "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads, "intermediate_size": self.intermediate_size,
        "hidden_act": self.hidden_act, "hidden_dropout_prob": self.hidden_dropout,
        "attention_probs_dropout_prob": self.attention_dropout, "max_position_embeddings": self.max_position_embeddings,
        "type_vocab_size": self.type_vocab_size, "initializer_range": 0.02, "layer_norm_eps": self.layer_norm_eps,
        "pad_token_id": self.pad_token_id, "position_embedding_type": "absolute",
        "classifier_dropout": self.classifier_dropout,
        "num_labels": self.num_labels,
        "id2label": {str(i): f"LABEL_{i}" for i in range(self.num_labels)},
        "label2id": {f"LABEL_{i}": i for i in range(self.num_labels)},
        "torch_dtype": "float32" if self.param_dtype == "float32" else self.param_dtype,
    }
    if self.is_roberta:
      c.update(bos_token_id=0, eos_token_id=2)
    return c


def position_ids(config: EncoderConfig, tokens: jax.Array) -> jax.Array:
  """int32[B, T] absolute positions as HF computes them.

  BERT: 0..T-1. RoBERTa / XLM-R (`create_position_ids_from_input_ids`): non-pad tokens count up
  from pad_token_id + 1, pad tokens sit at pad_token_id.
  """
  if config.is_roberta:
    not_pad = (tokens != config.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=1) * not_pad + config.pad_token_id
  return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32)[None], tokens.shape)


class BertLayer(nn.Module):
  """Post-LN transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)). Returns (x, None) (scan form)."""
  config: EncoderConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array):
    cfg = self.config
    dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
    dense = lambda n, axes, name: Dense(n, axes, dtype=dt, param_dtype=pdt, name=name)
    q = split_heads(dense(cfg.hidden_size, ("embed", "heads"), "query")(x), cfg.num_heads)
    k = split_heads(dense(cfg.hidden_size, ("embed", "heads"), "key")(x), cfg.num_heads)
    v = split_heads(dense(cfg.hidden_size, ("embed", "heads"), "value")(x), cfg.num_heads)
    training = not self.deterministic and cfg.attention_dropout > 0.0
    ctx = attention(q, k, v, mask[:, None, None, :], dropout_rate=cfg.attention_dropout if training else 0.0,
                    dropout_rng=self.make_rng("dropout") if training else None, impl=cfg.attention_impl)
    h = dense(cfg.hidden_size, ("heads", "embed"), "attn_out")(merge_heads(ctx))
    h = Dropout(cfg.hidden_dropout)(h, deterministic=self.deterministic)
    x = LayerNorm(cfg.layer_norm_eps, dt, pdt, name="attn_norm")(x + h)
    h = activation(cfg.hidden_act)(dense(cfg.intermediate_size, ("embed", "mlp"), "mlp_in")(x))
    h = dense(cfg.hidden_size, ("mlp", "embed"), "mlp_out")(h)
    h = Dropout(cfg.hidden_dropout)(h, deterministic=self.deterministic)
    x = LayerNorm(cfg.layer_norm_eps, dt, pdt, name="mlp_norm")(x + h)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return x, None


class BertEncoder(nn.Module):
  """Embeddings + `num_layers` BertLayers. tokens int32[B, T], mask bool[B, T] -> hidden f32[B, T, D]."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array, token_type_ids: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    cfg = self.config
    dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
    tokens = tokens.astype(jnp.int32)
    mask = mask.astype(bool)
    limit = cfg.max_position_embeddings - (cfg.pad_token_id + 1 if cfg.is_roberta else 0)
    if tokens.shape[1] > limit:  # a position table lookup past its end would silently clamp
      raise ConfigError(f"sequence length {tokens.shape[1]} exceeds the encoder's {limit} positions")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(tokens)
    x = Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), dt, pdt, name="word_embeddings")(tokens)
    x = x + Embed(cfg.max_position_embeddings, cfg.hidden_size, (None, "embed"), dt, pdt,
                  name="position_embeddings")(position_ids(cfg, tokens))
    x = x + Embed(cfg.type_vocab_size, cfg.hidden_size, (None, "embed"), dt, pdt,
                  name="token_type_embeddings")(token_type_ids.astype(jnp.int32))
    x = LayerNorm(cfg.layer_norm_eps, dt, pdt, name="embeddings_norm")(x)
    x = Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
    layer_cls = nn.remat(BertLayer) if cfg.remat else BertLayer
    if cfg.scan_layers:
      scanned = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        in_axes=nn.broadcast, length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(cfg, deterministic, name="layers")(x, mask)
    else:
      for i in range(cfg.num_layers):
        x, _ = layer_cls(cfg, deterministic, name=f"layers_{i}")(x, mask)
    return x.astype(jnp.float32)


def pool(hidden: jax.Array, mask: jax.Array, mode: str) -> jax.Array:
  """Sentence-transformers `Pooling`: hidden f32[B, T, D], mask bool[B, T] -> f32[B, D]."""
  h = hidden.astype(jnp.float32)
  m = mask.astype(jnp.float32)[..., None]
  if mode == "cls":  # first attended token (index 0 for right padding)
    first = jnp.argmax(mask.astype(jnp.int32), axis=1)
    return jnp.take_along_axis(h, first[:, None, None], axis=1)[:, 0]
  if mode == "max":
    return jnp.max(jnp.where(m > 0, h, -jnp.inf), axis=1)
  if mode in ("mean", "mean_sqrt_len_tokens"):
    total = jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    denom = total if mode == "mean" else jnp.sqrt(total)
    return jnp.sum(h * m, axis=1) / denom
  raise ConfigError(f"unsupported pooling {mode!r}; supported: {', '.join(POOLING_MODES)}")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) over the last axis (torch.nn.functional.normalize)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class BiEncoder(nn.Module):
  """Encoder + pooling (+ L2 normalisation): tokens, mask -> emb f32[B, D]."""
  config: EncoderConfig
  pooling: str = "mean"
  normalize: bool = False

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array, token_type_ids: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    hidden = BertEncoder(self.config, name="encoder")(tokens, mask, token_type_ids, deterministic)
    emb = pool(hidden, mask, self.pooling)
    return l2_normalize(emb) if self.normalize else emb


class CrossEncoder(nn.Module):
  """Encoder + classification head on the first token -> logits f32[B, num_labels].

  BERT: tanh(pooler(h[:, 0])) -> dropout -> classifier (BertForSequenceClassification).
  RoBERTa / XLM-R: dropout -> tanh(dense(h[:, 0])) -> dropout -> out_proj (RobertaClassificationHead).
  Both are stored as `pooler` [D, D] + `classifier` [D, num_labels].
  """
  config: EncoderConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array, token_type_ids: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    cfg = self.config
    pdt = as_dtype(cfg.param_dtype)
    hidden = BertEncoder(cfg, name="encoder")(tokens, mask, token_type_ids, deterministic)
    rate = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout
    x = hidden[:, 0]
    if cfg.is_roberta:
      x = Dropout(rate)(x, deterministic=deterministic)
    # the head runs in f32 whatever the compute dtype: its logit is a reward / a BCE loss's input
    x = jnp.tanh(Dense(cfg.hidden_size, ("embed", None), dtype=jnp.float32, param_dtype=pdt, name="pooler")(x))
    x = Dropout(rate)(x, deterministic=deterministic)
    logits = Dense(cfg.num_labels, ("embed", "classes"), dtype=jnp.float32, param_dtype=pdt, name="classifier")(x)
    return logits.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# HF checkpoint layout.

_LAYER_TENSORS = (  # (flax name under a layer, HF name under encoder.layer.{i}, transpose)
    ("query/kernel", "attention.self.query.weight", True), ("query/bias", "attention.self.query.bias", False),
    ("key/kernel", "attention.self.key.weight", True), ("key/bias", "attention.self.key.bias", False),
    ("value/kernel", "attention.self.value.weight", True), ("value/bias", "attention.self.value.bias", False),
    ("attn_out/kernel", "attention.output.dense.weight", True), ("attn_out/bias", "attention.output.dense.bias", False),
    ("attn_norm/scale", "attention.output.LayerNorm.weight", False),
    ("attn_norm/bias", "attention.output.LayerNorm.bias", False),
    ("mlp_in/kernel", "intermediate.dense.weight", True), ("mlp_in/bias", "intermediate.dense.bias", False),
    ("mlp_out/kernel", "output.dense.weight", True), ("mlp_out/bias", "output.dense.bias", False),
    ("mlp_norm/scale", "output.LayerNorm.weight", False), ("mlp_norm/bias", "output.LayerNorm.bias", False),
)
_UNUSED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def encoder_table(config: EncoderConfig, flax_prefix: str = "encoder/", hf_prefix: str = "") -> list[HFTensor]:
  """Flax paths of a BertEncoder <-> HF `BertModel` / `XLMRobertaModel` tensor names."""
  fp, hp = flax_prefix, hf_prefix
  table = [
      HFTensor(f"{fp}word_embeddings/embedding", f"{hp}embeddings.word_embeddings.weight"),
      HFTensor(f"{fp}position_embeddings/embedding", f"{hp}embeddings.position_embeddings.weight"),
      HFTensor(f"{fp}token_type_embeddings/embedding", f"{hp}embeddings.token_type_embeddings.weight"),
      HFTensor(f"{fp}embeddings_norm/scale", f"{hp}embeddings.LayerNorm.weight"),
      HFTensor(f"{fp}embeddings_norm/bias", f"{hp}embeddings.LayerNorm.bias"),
  ]
  for name, hf, transpose in _LAYER_TENSORS:
    if config.scan_layers:
      table.append(HFTensor(f"{fp}layers/{name}",
                            tuple(f"{hp}encoder.layer.{i}.{hf}" for i in range(config.num_layers)), transpose))
    else:
      table.extend(HFTensor(f"{fp}layers_{i}/{name}", f"{hp}encoder.layer.{i}.{hf}", transpose)
                   for i in range(config.num_layers))
  return table


def cross_encoder_table(config: EncoderConfig) -> list[HFTensor]:
  """CrossEncoder paths <-> `BertForSequenceClassification` / `XLMRobertaForSequenceClassification` names."""
  if config.is_roberta:
    head = [HFTensor("pooler/kernel", "classifier.dense.weight", True), HFTensor("pooler/bias", "classifier.dense.bias"),
            HFTensor("classifier/kernel", "classifier.out_proj.weight", True),
            HFTensor("classifier/bias", "classifier.out_proj.bias")]
    return encoder_table(config, hf_prefix="roberta.") + head
  head = [HFTensor("pooler/kernel", "bert.pooler.dense.weight", True), HFTensor("pooler/bias", "bert.pooler.dense.bias"),
          HFTensor("classifier/kernel", "classifier.weight", True), HFTensor("classifier/bias", "classifier.bias")]
  return encoder_table(config, hf_prefix="bert.") + head


def _encoder_prefix(tensors: Mapping[str, Any], source: str) -> str:
  """'' | 'bert.' | 'roberta.' | ...: the prefix before `embeddings.word_embeddings.weight`."""
  suffix = "embeddings.word_embeddings.weight"
  hits = sorted(n[: -len(suffix)] for n in tensors if n.endswith(suffix))
  if not hits:
    raise CheckpointMismatchError(f"checkpoint {source} does not match the model config:\n"
                                  f"  missing (1): {suffix} (no BERT-family embeddings found)")
  return hits[0]


def _sample_inputs(config: EncoderConfig):
  return jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool)


# ----------------------------------------------------------------------------------------------
# Loading.

def resolve_model_dir(name_or_path: str) -> str:
  """A registered model name or a local directory -> the directory (no network, ever)."""
  path = resolve(name_or_path)
  if not os.path.isdir(path):
    raise InputError(f"{path} is not a model directory (expected config.json + *.safetensors)")
  return path


def read_st_layout(path: str) -> dict[str, Any]:
  """A sentence-transformers (or plain HF: mean pooling, no normalisation) directory's layout:
  {"transformer_dir", "pooling", "normalize", "max_seq_length", "do_lower_case", ...}."""
  from qgjax.models.st_layout import read_st_layout as read
  return read(path, POOLING_MODES, "mean")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model")


def _load_tokenizer(path: str):
  """AutoTokenizer from the directory, or None when it holds no tokenizer files."""
  if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
    return None
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(path)


def _max_len(config: EncoderConfig, tokenizer, declared: int | None) -> int:
  limit = config.max_position_embeddings - (config.pad_token_id + 1 if config.is_roberta else 0)
  if declared:
    return min(int(declared), limit)
  tok_max = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
  return min(int(tok_max), limit) if tok_max and tok_max < 1e6 else limit


def load_bi_encoder(name_or_path: str, dtype: str = "float32", **config_overrides):
  """A sentence-transformers / HF directory (or registered name) -> (BiEncoder, params, tokenizer, info).

  info: {"path", "config", "pooling", "normalize", "max_seq_length", "do_lower_case",
  "passthrough"}: `passthrough` holds checkpoint tensors the bi-encoder does not use (the BERT
  pooler), which `save_bi_encoder_st` writes back unchanged. A checkpoint that does not fit the
  config raises CheckpointMismatchError listing every missing / unexpected / mis-shaped tensor.
  """
  path = resolve_model_dir(name_or_path)
  layout = read_st_layout(path)
  tdir = layout["transformer_dir"]
  config = EncoderConfig.from_hf(tdir, dtype=str(as_dtype(dtype)), param_dtype=str(as_dtype(dtype)),
                                 **config_overrides)
  module = BiEncoder(config, pooling=layout["pooling"], normalize=layout["normalize"])
  tensors = read_safetensors_dir(tdir)
  prefix = _encoder_prefix(tensors, tdir)
  table = encoder_table(config, hf_prefix=prefix)
  shapes = abstract_param_shapes(module, *_sample_inputs(config))
  used = {n for e in table for n in ((e.hf,) if isinstance(e.hf, str) else e.hf)}
  extra_ok = tuple(prefix + b for b in _UNUSED_BUFFERS) + (prefix + "pooler.",)
  params = params_from_hf(table, tensors, shapes, tdir, dtype, ignore_extra=extra_ok)
  passthrough = {n[len(prefix):]: t for n, t in tensors.items()
                 if n not in used and n.startswith(prefix + "pooler.")}
  tokenizer = _load_tokenizer(tdir)
  info = {"path": path, "config": config, "pooling": layout["pooling"], "normalize": layout["normalize"],
          "max_seq_length": _max_len(config, tokenizer, layout["max_seq_length"]),
          "do_lower_case": layout["do_lower_case"], "passthrough": passthrough}
  return module, params, tokenizer, info


def load_cross_encoder(name_or_path: str, dtype: str = "float32", *, num_labels: int | None = None,
                       new_head: bool = False, seed: int = 0, **config_overrides):
  """An HF `*ForSequenceClassification` directory -> (CrossEncoder, params, tokenizer, info).

  `new_head=True` starts a cross-encoder from a plain encoder checkpoint (e.g. MiniLM): the head
  tensors absent from the checkpoint (classifier; pooler where absent) are initialised from
  `seed` and listed in info["initialised"]. Without it any missing tensor is an error.
  """
  path = resolve_model_dir(name_or_path)
  layout = read_st_layout(path)
  tdir = layout["transformer_dir"]
  overrides = dict(config_overrides)
  if num_labels is not None:
    overrides["num_labels"] = num_labels
  config = EncoderConfig.from_hf(tdir, dtype=str(as_dtype(dtype)), param_dtype=str(as_dtype(dtype)), **overrides)
  module = CrossEncoder(config)
  tensors = read_safetensors_dir(tdir)
  table = cross_encoder_table(config)
  initialised: list[str] = []
  found, want = _encoder_prefix(tensors, tdir), ("roberta." if config.is_roberta else "bert.")
  tensors = {want + n[len(found):] if n.startswith(found) else n: t for n, t in tensors.items()}
  head_names = [e.hf for e in table[-4:]]
  if not new_head and not any(n in tensors for n in head_names[2:]):
    raise CheckpointMismatchError(
        f"checkpoint {tdir} has no classification head (missing: {', '.join(head_names[2:])}); it holds a plain "
        "encoder. Pass new_head=True to start a cross-encoder from it with a freshly initialised head.")
  if new_head:
    fresh = params_to_hf(table, init_params(module, seed))
    for e in table[-4:]:
      if e.hf not in tensors:
        tensors[e.hf] = fresh[e.hf]
        initialised.append(e.hf)
  shapes = abstract_param_shapes(module, *_sample_inputs(config))
  prefix = "roberta." if config.is_roberta else "bert."
  ignore = tuple(prefix + b for b in _UNUSED_BUFFERS) + (("roberta.pooler.",) if config.is_roberta else ())
  params = params_from_hf(table, tensors, shapes, tdir, dtype, ignore_extra=ignore)
  tokenizer = _load_tokenizer(tdir)
  info = {"path": path, "config": config, "max_seq_length": _max_len(config, tokenizer, layout["max_seq_length"]),
          "initialised": initialised}
  return module, params, tokenizer, info


# ----------------------------------------------------------------------------------------------
# Saving.

def save_bi_encoder_st(params: Mapping[str, Any], module: BiEncoder, tokenizer, out_dir: str, *,
                       max_seq_length: int | None = None, passthrough: Mapping[str, Any] | None = None,
                       dtype: str | None = None) -> str:
  """Writes a sentence-transformers directory (`SentenceTransformer(out_dir)` loads it).

  Layout: config.json + model.safetensors (HF `BertModel`/`XLMRobertaModel` names) + tokenizer
  files + modules.json + 1_Pooling/config.json + sentence_bert_config.json.
  """
  config = module.config
  tensors = params_to_hf(encoder_table(config), params, dtype)
  for name, t in (passthrough or {}).items():
    tensors[name] = np.asarray(t)
  write_safetensors_dir(tensors, out_dir, config.to_hf())
  if tokenizer is not None:
    save_tokenizer(tokenizer, out_dir)
  from qgjax.models.st_layout import pooling_config, write_st_modules
  write_st_modules(out_dir, pooling_config(config.hidden_size, module.pooling, POOLING_MODES), module.normalize,
                   max_seq_length or _max_len(config, tokenizer, None))
  return out_dir


def save_cross_encoder_hf(params: Mapping[str, Any], module: CrossEncoder, tokenizer, out_dir: str, *,
                          dtype: str | None = None) -> str:
  """Writes an HF `*ForSequenceClassification` directory (`AutoModelForSequenceClassification` loads it)."""
  config = module.config
  arch = {"bert": "BertForSequenceClassification", "roberta": "RobertaForSequenceClassification",
          "xlm-roberta": "XLMRobertaForSequenceClassification"}[config.model_type]
  tensors = params_to_hf(cross_encoder_table(config), params, dtype)
  write_safetensors_dir(tensors, out_dir, config.to_hf(arch))
  if tokenizer is not None:
    save_tokenizer(tokenizer, out_dir)
  return out_dir


def init_params(module: nn.Module, seed: int = 0) -> dict[str, Any]:
  """Fresh random params (plain arrays) for a BiEncoder / CrossEncoder / BertEncoder."""
  variables = jax.jit(module.init)(jax.random.PRNGKey(seed), *_sample_inputs(module.config))
  return unfreeze(nn.unbox(variables)["params"])
