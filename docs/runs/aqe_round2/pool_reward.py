"""The alignment reward of two scored pools on the queries both cover: mean over samples, mean of each query's best
and worst sample, and the share of queries whose best and worst differ (a pair). Round 1's pool is the base
generator's samples, round 2's the round-1 policy's: how far round 1 moved the policy on its own training queries.

  python docs/runs/aqe_round2/pool_reward.py /work/runs/aqe_n4_joined/score_train/scored \
      /work/runs/aqe_round2/score_train/scored --out docs/runs/aqe_round2/pool_reward.json
"""
import argparse
import collections
import json

from qgjax.data.records import iter_records


def rewards_by_query(scored_dir: str) -> dict[str, list[float]]:
  by_query = collections.defaultdict(list)
  for _, _, r in iter_records(scored_dir):
    by_query[r["query_id"]].append(float(r["reward"]))
  return by_query


def summary(by_query: dict[str, list[float]], ids: list[str]) -> dict:
  groups = [by_query[i] for i in ids]
  mean = lambda xs: sum(xs) / len(xs)
  return {"queries": len(groups), "samples": sum(map(len, groups)),
          "mean_reward": mean([x for g in groups for x in g]),
          "mean_best": mean([max(g) for g in groups]), "mean_worst": mean([min(g) for g in groups]),
          "share_with_pair": mean([float(max(g) > min(g)) for g in groups])}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("round1")
  ap.add_argument("round2")
  ap.add_argument("--out", required=True)
  a = ap.parse_args()
  r1, r2 = rewards_by_query(a.round1), rewards_by_query(a.round2)
  ids = sorted(set(r1) & set(r2))
  out = {"round1_pool": a.round1, "round2_pool": a.round2, "round1": summary(r1, ids), "round2": summary(r2, ids)}
  with open(a.out, "w") as f:
    json.dump(out, f, indent=1)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
