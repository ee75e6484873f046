"""lexical_copying (qgjax.evaluation.query_quality): hand-computed word shares and verbatim spans."""

from __future__ import annotations

import pytest

from qgjax.evaluation.query_quality import lexical_copying, longest_copied_span


def test_longest_copied_span_by_hand():
  doc = "nuts protect against heart disease in adults".split()
  assert longest_copied_span("do nuts protect against disease".split(), doc) == 3   # nuts protect against
  assert longest_copied_span("heart disease in adults".split(), doc) == 4
  assert longest_copied_span("disease heart".split(), doc) == 1                    # order matters
  assert longest_copied_span("vitamin c".split(), doc) == 0
  assert longest_copied_span([], doc) == 0


def test_lexical_copying_by_hand():
  docs = {"d1": "Nuts protect against heart disease in adults.", "d2": "Vitamin D helps bones."}
  records = [{"doc_id": "d1", "query": "Do nuts protect the heart?"},        # 5 words, 3 in doc, span 2
             {"doc_id": "d1", "query": "heart disease in adults"},           # 4 words, all in doc, span 4
             {"doc_id": "d2", "query": "do nuts protect the heart"},         # duplicate words of the first
             {"doc_id": "d2", "query": "vitamin d bones?"}]                  # 3 words, 3 in doc, span 2
  out = lexical_copying(records, docs.__getitem__)
  assert out["words"] == pytest.approx((5 + 4 + 5 + 3) / 4)
  assert out["question_share"] == pytest.approx(2 / 4)
  assert out["in_document_word_share"] == pytest.approx((3 / 5 + 1 + 0 + 1) / 4)
  assert out["longest_copied_span"] == pytest.approx((2 + 4 + 0 + 2) / 4)
  assert out["duplicate_share"] == pytest.approx(1 / 4)
