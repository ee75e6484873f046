"""One corpus-embedding store shared by score's dense rewards, mine and evaluate.

The store key is (corpus file, encoder files, the length texts are really cut to); a second
stage with the same cache_dir reads the store instead of encoding, a store begun by a killed
stage is resumed by another stage whatever shard size that one asks for, and the rows equal an
in-memory encode of the whole corpus.
"""

import ml_collections
import numpy as np
import pytest

from qgjax.data import demo_dir
from qgjax.data.beir import Corpus
from qgjax.retrieval.dense import DenseEncoder, corpus_store_dir, embed_corpus
from qgjax.retrieval.embeddings_store import read_manifest
from qgjax.rewards.dense import corpus_embeddings
from tiny_lm import make_tiny_bert


class CountingEncoder(DenseEncoder):
  """A DenseEncoder that counts the texts it encodes and can fail after `fail_after` of them."""
  encoded: int = 0
  fail_after: int | None = None

  def encode(self, texts, **kw):
    if self.fail_after is not None and self.encoded + len(texts) > self.fail_after:
      raise KeyboardInterrupt("killed")
    self.encoded += len(texts)
    return super().encode(texts, **kw)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
  return make_tiny_bert(str(tmp_path_factory.mktemp("emb_cache") / "tiny_bert"))


def _encoder(path):
  base = DenseEncoder.load(path)
  return CountingEncoder(base.module, base.params, base.tokenizer, base.info)


def test_score_mine_and_evaluate_share_one_store(encoder_dir, tmp_path):
  corpus = Corpus(str(demo_dir() / "corpus.jsonl"))
  enc = _encoder(encoder_dir)
  reference = enc.encode([d.contents for d in corpus], batch_size=16, max_len=128)
  enc.encoded = 0
  cache = str(tmp_path / "cache")
  cfg = ml_collections.ConfigDict(dict(model=encoder_dir, max_len=256, batch_size=16, cache_dir=cache))
  emb = corpus_embeddings(corpus, enc, cfg)          # score: encodes the 52 documents once
  assert enc.encoded == len(corpus) == 52
  np.testing.assert_allclose(emb, reference, atol=1e-6)
  # mine / evaluate with max_len 128: the tiny model cuts at 128 anyway, so the same store; read, not encoded
  store = corpus_store_dir(cache, str(corpus.path), enc, 128)
  assert store == corpus_store_dir(cache, str(corpus.path), enc, 256)
  ids, again = embed_corpus(str(corpus.path), store, enc, batch_size=8, max_len=128, shard_rows=7, corpus=corpus)
  assert enc.encoded == 52 and ids == corpus.doc_ids
  np.testing.assert_array_equal(again, emb)
  # a shorter cut is another store
  assert corpus_store_dir(cache, str(corpus.path), enc, 64) != store


def test_a_store_begun_by_a_killed_stage_is_resumed_by_another(encoder_dir, tmp_path):
  corpus = Corpus(str(demo_dir() / "corpus.jsonl"))
  enc = _encoder(encoder_dir)
  reference = enc.encode([d.contents for d in corpus], batch_size=16, max_len=128)
  store = corpus_store_dir(str(tmp_path / "cache"), str(corpus.path), enc, 128)
  enc.encoded, enc.fail_after = 0, 40
  with pytest.raises(KeyboardInterrupt):     # mine, shards of 16 rows, killed in the third shard
    embed_corpus(str(corpus.path), store, enc, batch_size=16, max_len=128, shard_rows=16, corpus=corpus)
  manifest = read_manifest(store)
  assert manifest["rows"] == 32 and not manifest["complete"]
  enc.encoded, enc.fail_after = 0, None
  # evaluate (default 8192-row shards) takes over: only the 20 missing documents are encoded
  ids, emb = embed_corpus(str(corpus.path), store, enc, batch_size=16, max_len=128, corpus=corpus)
  assert enc.encoded == 20 and ids == corpus.doc_ids
  assert read_manifest(store)["complete"] and read_manifest(store)["shard_rows"] == 16
  np.testing.assert_allclose(emb, reference, atol=1e-6)


def test_an_edited_corpus_gets_a_new_store(encoder_dir, tmp_path):
  import os
  import shutil
  path = tmp_path / "corpus.jsonl"
  shutil.copy(demo_dir() / "corpus.jsonl", path)
  enc = _encoder(encoder_dir)
  cache = str(tmp_path / "cache")
  before = corpus_store_dir(cache, str(path), enc, 128)
  embed_corpus(str(path), before, enc, batch_size=16, max_len=128)
  lines = path.read_text().splitlines()
  path.write_text("\n".join(lines[:-1]) + "\n")    # one document fewer
  os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
  after = corpus_store_dir(cache, str(path), enc, 128)
  assert after != before
  ids, emb = embed_corpus(str(path), after, enc, batch_size=16, max_len=128)
  assert len(ids) == emb.shape[0] == 51


def test_the_same_corpus_bytes_with_a_new_mtime_keep_their_store_and_index(encoder_dir, tmp_path):
  """A corpus synced again (same bytes, fresh mtime) keeps its embedding store and BM25 index key;
  one byte changed (same size) gets new ones."""
  import os
  import shutil

  from qgjax.retrieval.bm25 import corpus_fingerprint
  path = tmp_path / "corpus.jsonl"
  shutil.copy(demo_dir() / "corpus.jsonl", path)
  enc = _encoder(encoder_dir)
  cache = str(tmp_path / "cache")
  before, fp = corpus_store_dir(cache, str(path), enc, 128), corpus_fingerprint(path)
  st = os.stat(path)
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  assert corpus_store_dir(cache, str(path), enc, 128) == before and corpus_fingerprint(path) == fp
  data = bytearray(path.read_bytes())
  data[-3] = ord("X") if data[-3] != ord("X") else ord("Y")   # same size
  path.write_bytes(bytes(data))
  assert corpus_fingerprint(path) != fp and corpus_store_dir(cache, str(path), enc, 128) != before
