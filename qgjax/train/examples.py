"""Training records (JSONL, as `qgjax pairs` writes them) -> prompt token ids + completion texts.

Record shapes accepted (extra fields are ignored):
  SFT / RSFT   {<prompt source>, "query" | "completion"}        (the pairs stage's rsft.jsonl)
  DPO pairs    {<prompt source>, "chosen", "rejected", "reward_chosen"?, "reward_rejected"?,
                "ref_chosen"?, "ref_rejected"?}                  (its pairs.jsonl)
Prompt sources, first found wins: "prompt" (a finished prompt text), "source_query" (AQE: the
query to expand), "document" / "doc_text" (inline), "doc_id" (looked up in `data.corpus`;
contrastive prompts also read "negative_id"). Documents become prompts through the run's
`config.prompt` group with the same `PromptBuilder` as `qgjax generate`. Completions end
with the tokenizer's EOS token.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Sequence

from qgjax.data import storage
from qgjax.errors import InputError


def read_jsonl(path: str) -> Iterator[tuple[int, dict]]:
  """(1-based line, record) for each non-empty line (a local file or a gs:// object); InputError on bad JSON."""
  file = storage.as_path(path)
  if not file.is_file():
    raise InputError("file not found", path=str(path))
  with file.open("r", encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", path=path, line=line_no) from None
      if not isinstance(obj, dict):
        raise InputError("expected a JSON object", path=path, line=line_no)
      yield line_no, obj


def _text_field(obj: dict, names: Sequence[str], path: str, line: int) -> str:
  for name in names:
    if name in obj:
      value = obj[name]
      if not isinstance(value, str) or not value.strip():
        raise InputError("must be a non-empty string", path=path, line=line, field=name)
      return value
  raise InputError(f"missing; expected one of {', '.join(names)}", path=path, line=line, field=names[0])


class RecordPrompts:
  """A record -> the prompt's token ids, rendered exactly as `qgjax generate` renders them.

  Uses `qgjax.sampling.prompts.PromptBuilder` with the run's `config.prompt` group, so an
  aligned generator is trained on the prompts it will be sampled with.
  """

  def __init__(self, prompt_config: Any, tokenizer: Any, corpus: Any = None):
    from qgjax.sampling.prompts import PromptBuilder

    self.builder = PromptBuilder(prompt_config, tokenizer)
    self.tokenizer, self.corpus = tokenizer, corpus

  def _doc(self, doc_id: str, path: str, line: int, field: str) -> str:
    if self.corpus is None:
      raise InputError(f"records name a {field} but config data.corpus is not set", path=path, line=line, field=field)
    if doc_id not in self.corpus:
      raise InputError(f"{doc_id!r} is not in the corpus {self.corpus.path}", path=path, line=line, field=field)
    return self.corpus[doc_id].contents

  def ids(self, obj: dict, path: str, line: int) -> list[int]:
    if "prompt" in obj:   # a finished prompt text
      text = _text_field(obj, ("prompt",), path, line)
      return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]
    if "source_query" in obj:   # AQE: expand this query
      return self.builder.expansion_prompt(_text_field(obj, ("source_query",), path, line))
    if "document" in obj or "doc_text" in obj:
      document = _text_field(obj, ("document", "doc_text"), path, line)
    elif "doc_id" in obj:
      document = self._doc(str(obj["doc_id"]), path, line, "doc_id")
    else:
      raise InputError("missing; expected one of prompt, source_query, document, doc_id", path=path, line=line,
                       field="doc_id")
    negative = None
    if self.builder.mode == "contrastive":
      if "negative_id" not in obj:
        raise InputError("contrastive prompts need the record's negative_id", path=path, line=line,
                         field="negative_id")
      negative = self._doc(str(obj["negative_id"]), path, line, "negative_id")
    return self.builder.document_prompt(document, negative)


def tokenize_completions(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
  """Completion texts -> token ids + EOS."""
  eos = tokenizer.eos_token_id
  if eos is None:
    raise InputError("the tokenizer has no EOS token; completions need one to end")
  return [list(x) + [int(eos)] for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _group(obj: dict, line: int) -> str:
  for key in ("doc_id", "query_id"):
    if key in obj:
      return str(obj[key])
  return str(line)


def load_sft(path: str, prompts: RecordPrompts) -> dict[str, list]:
  """SFT / RSFT records -> {"prompt": ids, "completion": text, "group": doc/query id}."""
  out: dict[str, list] = {"prompt": [], "completion": [], "group": []}
  for line, obj in read_jsonl(path):
    out["prompt"].append(prompts.ids(obj, path, line))
    out["completion"].append(_text_field(obj, ("query", "completion", "chosen"), path, line))
    out["group"].append(_group(obj, line))
  if not out["prompt"]:
    raise InputError("no records", path=path)
  return out


def load_pairs(path: str, prompts: RecordPrompts | None) -> dict[str, list]:
  """Preference pairs -> {"prompt": ids, "chosen", "rejected": texts, "group"} + stored reference
  log-probs (ref_chosen / ref_rejected) when every record has them. prompts=None skips prompts."""
  out: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "group": [], "ref_chosen": [],
                          "ref_rejected": []}
  have_ref = None
  for line, obj in read_jsonl(path):
    if prompts is not None:
      out["prompt"].append(prompts.ids(obj, path, line))
    out["chosen"].append(_text_field(obj, ("chosen",), path, line))
    out["rejected"].append(_text_field(obj, ("rejected",), path, line))
    out["group"].append(_group(obj, line))
    has = "ref_chosen" in obj and "ref_rejected" in obj
    if have_ref is None:
      have_ref = has
    elif have_ref != has:
      raise InputError("either every pair carries ref_chosen/ref_rejected or none does", path=path, line=line,
                       field="ref_chosen")
    if has:
      for k in ("ref_chosen", "ref_rejected"):
        try:
          out[k].append(float(obj[k]))
        except (TypeError, ValueError):
          raise InputError("must be a number", path=path, line=line, field=k) from None
  if not out["chosen"]:
    raise InputError("no records", path=path)
  if not have_ref:
    del out["ref_chosen"], out["ref_rejected"]
  return out


def write_pairs_with_reference(src: str, dst: str, ref_chosen: Sequence[float], ref_rejected: Sequence[float]) -> None:
  """Copies the pairs file with ref_chosen / ref_rejected (summed log-probs) added to each record
  (atomically: temp + rename; on gs:// one upload)."""
  lines = [json.dumps(dict(obj, ref_chosen=float(ref_chosen[i]), ref_rejected=float(ref_rejected[i])),
                      ensure_ascii=False) + "\n" for i, (_, obj) in enumerate(read_jsonl(src))]
  storage.write_bytes_atomic(dst, "".join(lines).encode("utf-8"))
