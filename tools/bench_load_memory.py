"""Peak host memory of loading a decoder onto 8 simulated devices: full host copy vs sharded load.

  python tools/bench_load_memory.py [--model smollm2-135m-instruct] [--export /tmp/smollm2_f32_hf] [--json out.json]

Each (source, path, mesh) runs in a fresh subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 and reports VmHWM (peak resident set,
/proc/self/status) before and after loading, so the difference is what loading added
(CPU "device" buffers live in host memory too: a replicated copy costs 8x the parameters).

  hostcopy   load_decoder (full float32 numpy tree) + put_on_mesh   (what jobs do today)
  sharded    load_decoder(mesh=...): each device's slice read from the file, no full copy

Sources: the GGUF file of --model, and a float32 safetensors export of it written with
save_decoder_hf to --export (made once).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

MESHES = {"replicated": [("data", 8)], "fsdp8": [("fsdp", 8)], "data2_fsdp4": [("data", 2), ("fsdp", 4)]}


def _vm_hwm_mib() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def _child(path: str, how: str, mesh_name: str) -> dict:
  import time

  import jax

  from qgjax.models.registry import load_decoder
  from qgjax.parallel import mesh as mesh_lib, sharding

  mesh = mesh_lib.make_mesh(MESHES[mesh_name])
  rules = sharding.rules_for(mesh)
  jax.block_until_ready(jax.device_put(0.0))
  before = _vm_hwm_mib()
  t0 = time.perf_counter()
  if how == "sharded":
    model, params, _ = load_decoder(path, mesh=mesh, rules=rules, tokenizer=False)
  else:
    import jax.numpy as jnp
    model, host, _ = load_decoder(path, tokenizer=False)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32))
    params = sharding.put_on_mesh(host, sharding.tree_shardings(abstract["params"], mesh, rules))
    del host
  jax.block_until_ready(params)
  seconds = time.perf_counter() - t0
  n_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  per_device = sum(s.data.nbytes for x in jax.tree.leaves(params) for s in x.addressable_shards) / len(jax.devices())
  return {"source": "gguf" if path.endswith(".gguf") else "safetensors", "load": how, "mesh": mesh_name,
          "devices": len(jax.devices()), "param_mib": round(n_bytes / 2**20, 1),
          "per_device_mib": round(per_device / 2**20, 1), "hwm_before_mib": round(before, 1),
          "hwm_after_mib": round(_vm_hwm_mib(), 1), "added_mib": round(_vm_hwm_mib() - before, 1),
          "seconds": round(seconds, 2)}


def _export(model: str, out: str) -> str:
  if not os.path.isfile(os.path.join(out, "model.safetensors")):
    from qgjax.models.registry import load_decoder, save_decoder_hf
    lm, params, tok = load_decoder(model)
    save_decoder_hf(params, lm.config, tok, out)
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", default="smollm2-135m-instruct")
  ap.add_argument("--export", default="/tmp/qgjax_bench_load_memory_hf", help="float32 safetensors export dir")
  ap.add_argument("--json", default="", help="also write the rows here")
  ap.add_argument("--child", nargs=3, metavar=("PATH", "LOAD", "MESH"), help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.child:
    print(json.dumps(_child(*args.child)))
    return
  from qgjax.models.registry import resolve

  gguf = resolve(args.model)
  sources = [gguf, _export(args.model, args.export)]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  rows = []
  for path in sources:
    for how, mesh_name in [("hostcopy", "replicated"), ("sharded", "replicated"), ("hostcopy", "fsdp8"),
                           ("sharded", "fsdp8"), ("sharded", "data2_fsdp4")]:
      out = subprocess.run([sys.executable, __file__, "--child", path, how, mesh_name], env=env, check=True,
                           capture_output=True, text=True).stdout
      rows.append(json.loads(out.strip().splitlines()[-1]))
      print(json.dumps(rows[-1]), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
