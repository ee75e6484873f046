"""Orbax checkpoints: a restore into a model it does not fit names the tensors that differ."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qgjax.errors import CheckpointMismatchError
from qgjax.train.checkpoint import Checkpointer
from qgjax.train.step import TrainState


def _state(shape, head=False):
  params = {"dense": {"kernel": jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape),
                      "bias": jnp.zeros(shape[-1])}}
  if head:
    params["head"] = {"w": jnp.ones((2,))}
  return TrainState(step=jnp.int32(3), params=params, opt_state=optax.adam(1e-3).init(params), frozen={})


def _shardings(state):
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda _: one, state)


def test_restore_names_missing_and_misshaped_tensors(tmp_path):
  saved = _state((4, 4))
  ck = Checkpointer(str(tmp_path / "c"), async_save=False)
  ck.save(3, saved)
  ck.close()
  ck = Checkpointer(str(tmp_path / "c"), async_save=False)
  back = ck.restore(3, _state((4, 4)), _shardings(saved))
  np.testing.assert_array_equal(back.params["dense"]["kernel"], saved.params["dense"]["kernel"])
  other = _state((8, 4), head=True)
  with pytest.raises(CheckpointMismatchError) as e:
    ck.restore(3, other, _shardings(other))
  msg = str(e.value)
  assert "missing: " in msg and "params.head.w" in msg
  assert "mis-shaped: " in msg and "params.dense.kernel (4, 4) stored vs (8, 4) here" in msg
  ck.close()


def test_a_moved_run_resumes_and_its_inputs_compare_under_the_new_place(tmp_path):
  """Checkpoints written in <old>/align/checkpoints with inputs under <old> restore from <new>/align/checkpoints
  when the inputs are the same paths under <new>; an input outside the moved directory, or another
  setting, is still refused by name."""
  import shutil

  from qgjax.data.settings_diff import moved_root

  old, new = tmp_path / "run", tmp_path / "elsewhere" / "copy"
  fp = lambda root, corpus="/data/corpus.jsonl", lr=1e-3: {"train_file": f"{root}/pairs/pairs.jsonl",
                                                          "corpus": corpus, "optim": {"lr": lr}}
  saved = _state((4, 4))
  ck = Checkpointer(str(old / "align" / "checkpoints"), async_save=False, fingerprint=fp(old))
  ck.save(3, saved)
  ck.close()
  shutil.copytree(old, new)
  ck = Checkpointer(str(new / "align" / "checkpoints"), async_save=False, fingerprint=fp(new))
  back = ck.restore(3, _state((4, 4)), _shardings(saved))
  np.testing.assert_array_equal(back.params["dense"]["kernel"], saved.params["dense"]["kernel"])
  ck.close()
  for other, changed in ((fp(new, corpus="/data/other.jsonl"), "corpus"), (fp(new, lr=0.5), "optim.lr"),
                         (fp(tmp_path / "third"), "train_file")):
    ck = Checkpointer(str(new / "align" / "checkpoints"), async_save=False, fingerprint=other)
    with pytest.raises(CheckpointMismatchError, match=rf"different run .*{changed}"):
      ck.restore(3, _state((4, 4)), _shardings(saved))
    ck.close()
  assert moved_root("/a/run/align/checkpoints", "/b/copy/align/checkpoints") == ("/a/run", "/b/copy")
  assert moved_root("gs://b/x/ck", "/local/y/ck") == ("gs://b/x", "/local/y")


def test_unretrieved_disk_full_write_tasks_are_not_reported_other_task_errors_are(tmp_path, caplog):
  """After a save on a full disk, asyncio reports each orbax write task nobody awaited ("Task exception
  was never retrieved", a traceback apiece) when it is collected, after the run has printed its one
  error line; those reports are dropped, any other task's error still goes through."""
  import asyncio
  import gc

  Checkpointer(str(tmp_path / "ckpt")).close()   # the filter stays after close: tasks die later

  def unretrieved(message):
    async def fails():
      raise ValueError(message)
    loop = asyncio.new_event_loop()
    task = loop.create_task(fails())
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    del task
    gc.collect()

  with caplog.at_level("ERROR", logger="asyncio"):
    unretrieved("RESOURCE_EXHAUSTED: Failed to write 183 bytes to file 15: No space left on device "
                "[os_error_code='28']")
    assert not [r for r in caplog.records if r.name == "asyncio"]
    unretrieved("another failure")
    assert [r for r in caplog.records if r.name == "asyncio" and "never retrieved" in r.getMessage()]
