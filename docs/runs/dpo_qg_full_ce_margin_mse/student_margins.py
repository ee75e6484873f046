"""The student's starting margins against the teacher's, on a MarginMSE run's cross-encoder-scored tuples.

  python docs/runs/dpo_qg_full_ce_margin_mse/student_margins.py <run> <bi-encoder> <embedding store of that
      bi-encoder over the corpus (<run>/cache/embeddings/emb-*)>  > student_margins.jsonl

For each mined (query, positive, negative) of mine_unaligned / mine_aligned: the bi-encoder's cosine margin
s(q, pos) - s(q, neg) and the teacher's logit margin ce_pos - ce_neg; their means, spreads, Pearson
correlation, sign agreement, and the scale that would match them (std ratio; least squares through 0).
"""
import glob, json, sys
import numpy as np
from qgjax.retrieval.dense import DenseEncoder
from qgjax.retrieval.embeddings_store import load_embeddings
run, model, store = sys.argv[1], sys.argv[2], sys.argv[3]
ids, emb = load_embeddings(store)
row = {d: i for i, d in enumerate(ids)}
enc = DenseEncoder.load(model)
for st in ["mine_unaligned", "mine_aligned"]:
  recs = [json.loads(l) for f in sorted(glob.glob(f"{run}/{st}/tuples/shard-*.jsonl")) for l in open(f)]
  recs = [r for r in recs if "ce_pos" in r]
  q = enc.encode_queries([r["query"] for r in recs], max_len=64)
  s, t = [], []
  for i, r in enumerate(recs):
    sp = q[i] @ emb[row[r["pos_id"]]]
    for nid, cn in zip(r["neg_ids"], r["ce_neg"]):
      s.append(sp - q[i] @ emb[row[nid]]); t.append(r["ce_pos"] - cn)
  s, t = np.array(s), np.array(t)
  c = np.corrcoef(s, t)[0, 1]
  print(json.dumps({"stage": st, "tuples": len(recs), "pairs": len(s), "student_margin_mean": round(float(s.mean()), 4),
                    "student_margin_std": round(float(s.std()), 4), "teacher_margin_mean": round(float(t.mean()), 4),
                    "teacher_margin_std": round(float(t.std()), 4), "pearson": round(float(c), 4),
                    "std_ratio_teacher_over_student": round(float(t.std() / s.std()), 2),
                    "least_squares_scale": round(float((s @ t) / (s @ s)), 2),
                    "sign_agreement": round(float(np.mean(np.sign(s) == np.sign(t))), 4)}))
