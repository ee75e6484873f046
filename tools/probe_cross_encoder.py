"""Does a cross-encoder started from a sentence encoder learn relevance from a collection's qrels, and
how fast? A minimal loop outside `qgjax train`, to tell a learning-rate or head problem from a slow one.

Each step takes the next `--batch` judged (query, relevant document) pairs of `qrels/<split>.tsv`
(shuffled by seed) and as many (query, random unjudged document) pairs, tokenised together as HF
tokenises a pair, and takes one AdamW step on BCE (label 1 / 0) or on the pairwise logistic loss
log(1 + exp(s- - s+)). Every `--every` steps it prints the training loss, the gradient norm and the
pairwise accuracy on a held-out set of `--held` judged pairs (the last ones of the shuffled file) each
against a random document: P(s(q_i, d+_i) > s(q_j, d-_j)) over all i, j, and per pair.

  python tools/probe_cross_encoder.py --data ../shared/data/nfcorpus --steps 40 --lr 5e-5
  python tools/probe_cross_encoder.py --data ../shared/data/nfcorpus --steps 40 --lr 2e-4   # collapses
  python tools/probe_cross_encoder.py --data ../shared/data/nfcorpus --pooling mean --loss pair

The head is the model's `CrossEncoder` head (pooler + new classifier) on [CLS], or with `--pooling mean`
the same pooler and classifier on the mean of the token states.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qgjax.data.beir import Corpus, load_qrels, load_queries, queries_path  # noqa: E402
from qgjax.models import bert  # noqa: E402


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--data", required=True, help="BEIR dir with corpus.jsonl, queries and qrels/<split>.tsv")
  ap.add_argument("--split", default="train")
  ap.add_argument("--model", default="all-minilm-l6-v2")
  ap.add_argument("--steps", type=int, default=40)
  ap.add_argument("--batch", type=int, default=16, help="judged pairs per step (plus as many random negatives)")
  ap.add_argument("--lr", type=float, default=5e-5)
  ap.add_argument("--head-lr", type=float, default=0.0, help="another learning rate for pooler + classifier")
  ap.add_argument("--loss", choices=("bce", "pair"), default="bce")
  ap.add_argument("--pooling", choices=("cls", "mean"), default="cls")
  ap.add_argument("--max-len", type=int, default=160)
  ap.add_argument("--held", type=int, default=64)
  ap.add_argument("--every", type=int, default=5)
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args(argv)

  corpus = Corpus(os.path.join(a.data, "corpus.jsonl"))
  qrels = load_qrels(os.path.join(a.data, "qrels", f"{a.split}.tsv"), min_grade=1)
  queries = load_queries(queries_path(a.data, a.split))
  pairs = [(q, d) for q, docs in qrels.items() if q in queries for d in docs]
  rng = random.Random(a.seed)
  rng.shuffle(pairs)
  need = a.steps * a.batch + a.held
  if len(pairs) < need:
    raise SystemExit(f"{len(pairs)} judged pairs; {need} needed for {a.steps} steps of {a.batch} and {a.held} held out")
  ids = list(corpus.doc_ids)
  texts = {}

  def text(d):
    if d not in texts:
      texts[d] = corpus.get_many([d])[0].contents
    return texts[d]

  def negative(q):
    while True:
      d = rng.choice(ids)
      if d not in qrels[q]:
        return d

  module, params, tok, info = bert.load_cross_encoder(a.model, new_head=True, seed=a.seed)

  def tokenise(chunk):
    rows = [(queries[q], text(d)) for q, d in chunk] + [(queries[q], text(negative(q))) for q, _ in chunk]
    e = tok([x for x, _ in rows], [y for _, y in rows], truncation="only_second", max_length=a.max_len,
            padding="max_length", return_tensors="np")
    return e["input_ids"].astype(np.int32), e["attention_mask"].astype(bool), e["token_type_ids"].astype(np.int32)

  encoder = bert.BertEncoder(info["config"])

  def logits(p, t, m, ty):
    if a.pooling == "cls":
      return module.apply({"params": p}, t, m, ty)[:, 0]
    h = encoder.apply({"params": p["encoder"]}, t, m, ty, True)
    w = m[..., None].astype(jnp.float32)
    x = jnp.tanh((h * w).sum(1) / w.sum(1) @ p["pooler"]["kernel"] + p["pooler"]["bias"])
    return x @ p["classifier"]["kernel"][:, 0] + p["classifier"]["bias"][0]

  labels = jnp.asarray([1.0] * a.batch + [0.0] * a.batch)

  def loss_fn(p, t, m, ty):
    s = logits(p, t, m, ty)
    if a.loss == "pair":
      return jnp.mean(jnp.logaddexp(0.0, s[a.batch:] - s[:a.batch])), s
    return jnp.mean(jnp.logaddexp(0.0, s) - labels * s), s

  if a.head_lr:
    part = {k: jax.tree.map(lambda _, k=k: "head" if k in ("pooler", "classifier") else "encoder", v)
            for k, v in params.items()}
    inner = optax.multi_transform({"head": optax.adamw(a.head_lr, weight_decay=0.01),
                                   "encoder": optax.adamw(a.lr, weight_decay=0.01)}, part)
  else:
    inner = optax.adamw(a.lr, weight_decay=0.01)
  opt = optax.chain(optax.clip_by_global_norm(1.0), inner)
  state = opt.init(params)

  @jax.jit
  def step(p, st, t, m, ty):
    (loss, s), g = jax.value_and_grad(loss_fn, has_aux=True)(p, t, m, ty)
    u, st = opt.update(g, st, p)
    return optax.apply_updates(p, u), st, loss, optax.global_norm(g)

  held = tokenise(pairs[-a.held:])
  score = jax.jit(logits)

  def held_accuracy(p):
    s = np.asarray(score(p, *held))
    pos, neg = s[:a.held], s[a.held:]
    return float((pos[:, None] > neg[None, :]).mean()), float((pos > neg).mean())

  settings = {k: v for k, v in vars(a).items()}
  print(json.dumps({"step": 0, "held_all_pairs": held_accuracy(params)[0], "settings": settings}), flush=True)
  t0 = time.perf_counter()
  for k in range(a.steps):
    params, state, loss, gnorm = step(params, state, *tokenise(pairs[k * a.batch:(k + 1) * a.batch]))
    if (k + 1) % a.every == 0 or k + 1 == a.steps:
      acc_all, acc_pair = held_accuracy(params)
      print(json.dumps({"step": k + 1, "loss": round(float(loss), 4), "grad_norm": round(float(gnorm), 4),
                        "held_all_pairs": round(acc_all, 4), "held_per_pair": round(acc_pair, 4),
                        "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
  main()
