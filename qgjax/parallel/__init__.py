"""qgjax.parallel: backend and dtype policy, device mesh, logical-axis sharding, multi-host init.

  backend.py      detect_backend (TPU -> GPU -> CPU), compute_dtype, attention_impl, resolve_attention
  mesh.py         make_mesh / mesh_from_config from `config.mesh = [("data", -1), ...]`
  sharding.py     logical rules -> NamedSharding, sharded_init, put_on_mesh, put_batch
  data_parallel.py  RowParallel: batched inference (encoders, cross-encoders, LM judges) split by
                  rows over a ("data",) mesh of every device of every process
  distributed.py  jax.distributed.initialize from QGJAX_* variables, is_main_process
"""

from qgjax.parallel.backend import attention_impl, compute_dtype, detect_backend, resolve_attention
from qgjax.parallel.mesh import make_mesh, mesh_from_config
from qgjax.parallel.sharding import (DEFAULT_RULES, activate, batch_sharding, put_batch, put_on_mesh,
                                     rules_for, sharded_init, tree_shardings)
