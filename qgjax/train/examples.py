"""Training records (JSONL) -> prompt / completion texts -> token columns for `StepLoader`.

Record shapes accepted (extra fields are ignored):
  SFT / RSFT   {"doc_id" | "document" | "prompt", "query" | "completion"}        (best-of-n rows too)
  DPO pairs    {"doc_id" | "document" | "prompt", "chosen", "rejected",
                "reward_chosen"?, "reward_rejected"?, "ref_chosen"?, "ref_rejected"?}
A "prompt" is the finished model input text; otherwise the document (inline, or looked up by
`doc_id` in `data.corpus`) is cut to `data.max_doc_tokens` tokens and put into
`data.prompt_template` ("{document}" marks the spot), wrapped in the tokenizer's chat template
when `data.chat` is true (instruct models) -- the same format the `generate` stage uses.
Completions end with the tokenizer's EOS token.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Sequence

from qgjax.errors import InputError

DEFAULT_TEMPLATE = ("Write one short search query that this document answers. "
                    "Reply with the query only.\n\nDocument: {document}")


def read_jsonl(path: str) -> Iterator[tuple[int, dict]]:
  """(1-based line, record) for each non-empty line; InputError on bad JSON."""
  if not os.path.isfile(path):
    raise InputError("file not found", path=path)
  with open(path, encoding="utf-8") as f:
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


class PromptBuilder:
  """Document text -> model input text (truncated document, template, chat wrapper)."""

  def __init__(self, tokenizer: Any, *, template: str = DEFAULT_TEMPLATE, chat: bool = True,
               max_doc_tokens: int = 256, corpus: Any = None):
    if "{document}" not in template:
      raise InputError("data.prompt_template must contain '{document}'")
    self.tokenizer, self.template, self.max_doc_tokens, self.corpus = tokenizer, template, max_doc_tokens, corpus
    self.chat = bool(chat and getattr(tokenizer, "chat_template", None))

  def truncate(self, text: str) -> str:
    ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= self.max_doc_tokens:
      return text
    return self.tokenizer.decode(ids[: self.max_doc_tokens])

  def from_document(self, document: str) -> str:
    user = self.template.format(document=self.truncate(document))
    if not self.chat:
      return user
    return self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                              add_generation_prompt=True)

  def for_record(self, obj: dict, path: str, line: int) -> str:
    if "prompt" in obj:
      return _text_field(obj, ("prompt",), path, line)
    if "document" in obj or "doc_text" in obj:
      return self.from_document(_text_field(obj, ("document", "doc_text"), path, line))
    if "doc_id" in obj:
      if self.corpus is None:
        raise InputError("records name a doc_id but config data.corpus is not set", path=path, line=line,
                         field="doc_id")
      doc_id = str(obj["doc_id"])
      if doc_id not in self.corpus:
        raise InputError(f"doc_id {doc_id!r} is not in the corpus {self.corpus.path}", path=path, line=line,
                         field="doc_id")
      return self.from_document(self.corpus[doc_id].contents)
    raise InputError("missing; expected one of prompt, document, doc_id", path=path, line=line, field="doc_id")


def tokenize_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
  """Prompt texts (already templated) -> token ids (no extra BOS: chat templates carry their own)."""
  return [list(x) for x in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]


def tokenize_completions(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
  """Completion texts -> token ids + EOS."""
  eos = tokenizer.eos_token_id
  if eos is None:
    raise InputError("the tokenizer has no EOS token; completions need one to end")
  return [list(x) + [int(eos)] for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def load_sft(path: str, builder: PromptBuilder) -> dict[str, list]:
  """SFT / RSFT records -> {"prompt": [...], "completion": [...], "doc_id": [...]} (texts)."""
  prompts, completions, doc_ids = [], [], []
  for line, obj in read_jsonl(path):
    prompts.append(builder.for_record(obj, path, line))
    completions.append(_text_field(obj, ("query", "completion", "chosen"), path, line))
    doc_ids.append(str(obj.get("doc_id", line)))
  if not prompts:
    raise InputError("no records", path=path)
  return {"prompt": prompts, "completion": completions, "doc_id": doc_ids}


def load_pairs(path: str, builder: PromptBuilder) -> dict[str, list]:
  """Preference pairs -> {"prompt", "chosen", "rejected", "doc_id"} texts + any stored reference log-probs."""
  out: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "doc_id": [], "ref_chosen": [],
                          "ref_rejected": []}
  have_ref = None
  for line, obj in read_jsonl(path):
    out["prompt"].append(builder.for_record(obj, path, line))
    out["chosen"].append(_text_field(obj, ("chosen",), path, line))
    out["rejected"].append(_text_field(obj, ("rejected",), path, line))
    out["doc_id"].append(str(obj.get("doc_id", line)))
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
  if not out["prompt"]:
    raise InputError("no records", path=path)
  if not have_ref:
    del out["ref_chosen"], out["ref_rejected"]
  return out


def write_pairs_with_reference(src: str, dst: str, ref_chosen: Sequence[float], ref_rejected: Sequence[float]) -> None:
  """Copies the pairs file with ref_chosen / ref_rejected (summed log-probs) added to each record."""
  tmp = dst + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for i, (_, obj) in enumerate(read_jsonl(src)):
      obj = dict(obj, ref_chosen=float(ref_chosen[i]), ref_rejected=float(ref_rejected[i]))
      f.write(json.dumps(obj, ensure_ascii=False) + "\n")
  os.replace(tmp, dst)
