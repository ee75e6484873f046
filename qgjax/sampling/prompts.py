"""Prompts as data: what the generator is asked, built from a config group, rendered to token ids.

Modes (`config.prompt.mode`):
  plain        an instruction + the document                         -> queries for the document
  few_shot     the same, preceded by worked (document, query) examples from the config
  contrastive  the document and a negative document (2505.19307 conditions on both): a query
               the document answers and the negative does not
  expansion    AQE: a given query -> an expansion (text that helps retrieve its answer)

Templates are Python format strings with the fields {document}, {negative}, {query}. With a
chat template in the tokenizer the instruction is the user turn (few-shot examples become
earlier user/assistant turns) and the generation prompt opens the assistant turn; without one
the text is used as is, few-shot examples inline.

Documents are cut to `max_doc_tokens` tokens (the negative to `max_negative_tokens`) so every
prompt fits the largest length bucket.

  builder = PromptBuilder(config.prompt, tokenizer)
  ids = builder.document_prompt(doc_text, negative_text=None)     -> list[int]
  ids = builder.expansion_prompt(query_text)                       -> list[int]
  ids = builder.common_prefix()          -> the tokens every prompt of this builder starts with
  newline_token_ids(tokenizer)                                     -> ids whose text holds a newline
"""

from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from qgjax.errors import ConfigError

MODES = ("plain", "few_shot", "contrastive", "expansion")

DEFAULT_TEMPLATES = {
    # the same words as qgjax.train.examples.DEFAULT_TEMPLATE: aligned models see what they learnt
    "plain": ("Write one short search query that this document answers. "
              "Reply with the query only.\n\nDocument: {document}"),
    "few_shot": ("Write one short search query that this document answers. "
                 "Reply with the query only.\n\nDocument: {document}"),
    "contrastive": ("Here are two documents. Write one short search query that Document A answers "
                    "but Document B does not. Reply with the query only.\n\n"
                    "Document A: {document}\n\nDocument B: {negative}"),
    "expansion": ("Expand the following search query so that a search engine finds the documents "
                  "that answer it: write a short passage with the key terms, synonyms and the likely "
                  "answer. Reply with the passage only.\n\nQuery: {query}"),
}

DEFAULT_EXAMPLES = (
    {"document": ("The Great Barrier Reef, off the coast of Queensland, Australia, is the world's largest "
                  "coral reef system, made of over 2,900 individual reefs. Rising sea temperatures cause "
                  "coral bleaching, which has damaged large parts of the reef since 2016."),
     "query": "what is damaging the great barrier reef"},
    {"document": ("Vitamin D is produced in the skin when it is exposed to ultraviolet B light from the sun. "
                  "It helps the body absorb calcium, and a deficiency can lead to weak bones, a condition "
                  "called rickets in children."),
     "query": "vitamin d deficiency bones"},
    {"document": ("The Peace of Westphalia, two treaties signed in 1648 in Osnabrueck and Muenster, ended the "
                  "Thirty Years' War and established the principle that each state governs its own territory."),
     "query": "which treaty ended the thirty years war"},
)

DEFAULT_SYSTEM = ("You write search queries. Given a document, you reply with one short search query "
                  "that the document answers, and nothing else.")


def default_prompt_config(mode: str = "plain") -> ml_collections.ConfigDict:
  """The `config.prompt` group with defaults for `mode`."""
  if mode not in MODES:
    raise ConfigError(f"unknown prompt mode {mode!r}; expected one of {', '.join(MODES)}")
  c = ml_collections.ConfigDict()
  c.mode = mode
  c.template = DEFAULT_TEMPLATES[mode]
  c.system = DEFAULT_SYSTEM if mode == "few_shot" else ""  # system turn; "" = the template's default
  c.examples = [dict(e) for e in DEFAULT_EXAMPLES] if mode == "few_shot" else []
  c.use_chat_template = True         # when the tokenizer has one
  c.answer_prefix = "Answer:"        # without a chat template: what follows the instruction
  c.max_doc_tokens = 192
  c.max_negative_tokens = 96
  c.negative = "random"              # contrastive: "random" other document, or a JSONL {doc_id, negative_id}
  return c


def _truncate(tokenizer: Any, text: str, max_tokens: int) -> str:
  ids = tokenizer(text, add_special_tokens=False)["input_ids"]
  if len(ids) <= max_tokens:
    return text
  return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True).strip()


class PromptBuilder:
  """Renders prompts for one config group (see `default_prompt_config`) and one tokenizer."""

  def __init__(self, config: ml_collections.ConfigDict, tokenizer: Any):
    if config.mode not in MODES:
      raise ConfigError(f"unknown prompt mode {config.mode!r}; expected one of {', '.join(MODES)}")
    self.config = config
    self.tokenizer = tokenizer
    self.mode = config.mode
    self.chat = bool(config.use_chat_template) and bool(getattr(tokenizer, "chat_template", None))
    self._shots_cache: tuple[tuple, list[tuple[str, str]]] | None = None
    fields = {"plain": ["document"], "few_shot": ["document"], "contrastive": ["document", "negative"],
              "expansion": ["query"]}[self.mode]
    for f in fields:
      if "{" + f + "}" not in config.template:
        raise ConfigError(f"prompt template for mode {self.mode!r} must contain {{{f}}}")
    if self.mode == "few_shot":
      if not config.examples:
        raise ConfigError("prompt mode 'few_shot' needs prompt.examples: [{document, query}, ...]")
      for i, ex in enumerate(config.examples):
        if "document" not in ex or "query" not in ex:
          raise ConfigError(f"prompt.examples[{i}] needs 'document' and 'query'")

  def _render(self, user_text: str, shots: Sequence[tuple[str, str]] = ()) -> list[int]:
    tok = self.tokenizer
    if self.chat:
      messages = [{"role": "system", "content": self.config.system}] if self.config.system else []
      for user, answer in shots:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
      messages.append({"role": "user", "content": user_text})
      out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
      ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
      return [int(i) for i in ids]
    prefix = self.config.answer_prefix
    text = "".join(f"{u}\n{prefix} {a}\n\n" for u, a in shots) + f"{user_text}\n{prefix}"
    if self.config.system:
      text = self.config.system + "\n\n" + text
    return [int(i) for i in tok(text, add_special_tokens=True)["input_ids"]]

  def _shots(self) -> list[tuple[str, str]]:
    """The few-shot (user turn, answer) pairs, rendered once per (template, max_doc_tokens,
    examples): the same for every document."""
    if self.mode != "few_shot":
      return []
    c = self.config
    key = (c.template, int(c.max_doc_tokens), tuple((ex["document"], ex["query"]) for ex in c.examples))
    if self._shots_cache is None or self._shots_cache[0] != key:
      shots = [(c.template.format(document=_truncate(self.tokenizer, doc, c.max_doc_tokens)), query)
               for doc, query in key[2]]
      self._shots_cache = (key, shots)
    return self._shots_cache[1]

  def document_prompt(self, document: str, negative: str | None = None) -> list[int]:
    """Token ids of the prompt for one document (and its negative in contrastive mode)."""
    c = self.config
    if self.mode == "expansion":
      raise ConfigError("prompt mode 'expansion' expands queries; use expansion_prompt")
    fields = {"document": _truncate(self.tokenizer, document, c.max_doc_tokens)}
    if self.mode == "contrastive":
      if negative is None:
        raise ValueError("contrastive prompts need a negative document")
      fields["negative"] = _truncate(self.tokenizer, negative, c.max_negative_tokens)
    return self._render(c.template.format(**fields), self._shots())

  def common_prefix(self) -> list[int]:
    """The token prefix that every prompt of this builder starts with (the chat template's opening,
    the system turn, few-shot examples, the instruction up to the first field): the longest common
    start of prompts rendered for PREFIX_PROBES, less its last token, which a tokenizer could merge
    differently with the text after it. Not a guarantee: the sampler checks each prompt."""
    if self.mode == "expansion":
      prompts = [self.expansion_prompt(p) for p in PREFIX_PROBES]
    else:
      negatives = PREFIX_PROBES[1:] + PREFIX_PROBES[:1]
      prompts = [self.document_prompt(p, n if self.mode == "contrastive" else None)
                 for p, n in zip(PREFIX_PROBES, negatives)]
    return common_start(prompts)[:-1]

  def expansion_prompt(self, query: str) -> list[int]:
    """Token ids of the prompt that asks for an expansion of `query`."""
    if self.mode != "expansion":
      raise ConfigError(f"prompt mode {self.mode!r} is not 'expansion'")
    return self._render(self.config.template.format(query=query))


# Texts that differ from their first character on, put in every field to find the common prefix.
PREFIX_PROBES = ("Alpha beta gamma.", "7 zeta", "(x) y", "- item one", "\u00e9t\u00e9 chaud")


def common_start(lists: Sequence[Sequence[int]]) -> list[int]:
  """The longest list of ids that every list in `lists` (at least one) starts with."""
  first = list(lists[0])
  n = len(first)
  for other in lists[1:]:
    n = min(n, len(other))
    n = next((i for i in range(n) if other[i] != first[i]), n)
  return first[:n]


def newline_token_ids(tokenizer: Any) -> tuple[int, ...]:
  """Every token id whose decoded text contains a newline (stop tokens for one-line outputs)."""
  return tuple(i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i]))
