"""Zero-shot labels and prompt templates: the rules both the API and the CLI apply, in one place.

A label is text naming a class; a template is text with one ``{}`` where the label goes
(``"a photo of a {}."``); every label is embedded through every template and the embeddings
averaged (CLIP's prompt ensemble, Radford et al. 2021, section 3.1.4).

- A blank label is an error, never dropped: dropping it would shift the rows of the
  label matrix away from the caller's list.
- A duplicate label is an error: two rows for one class split its probability in two.
- A template has exactly one ``{}`` and no other replacement field (write ``{{`` / ``}}``
  for a literal brace).
"""

from __future__ import annotations

import string
from typing import Sequence

from vlm.errors import InvalidOption, UsageError


def check_labels(labels, what: str = "labels") -> list[str]:
    """The labels, stripped; raises ``TypeError`` for a string or non-text items, ``UsageError``
    for an empty list, a blank label or a duplicate."""
    if isinstance(labels, (str, bytes)):
        raise TypeError(f"{what}: expected a list of strings, got a single {type(labels).__name__} "
                        f"{labels[:40]!r}; pass [{labels[:40]!r}] or split it (e.g. text.split(','))")
    try:
        items = list(labels)
    except TypeError:
        raise TypeError(f"{what}: expected a list of strings, got {type(labels).__name__}") from None
    out = []
    for n, label in enumerate(items):
        if not isinstance(label, str):
            raise TypeError(f"{what}[{n}]: expected a string, got {type(label).__name__}")
        out.append(label.strip())
    if not out or not any(out):
        raise UsageError(f"{what}: empty label list: give at least one label")
    blank = [n for n, label in enumerate(out) if not label]
    if blank:
        raise UsageError(f"{what}: label {blank[0]} of {len(out)} is blank (counting from 0); "
                         f"every label needs text")
    first: dict[str, int] = {}
    for n, label in enumerate(out):
        if label in first:
            raise UsageError(f"{what}: {label!r} is given twice (labels {first[label]} and {n}, counting from 0); "
                             f"a repeated label would split its probability")
        first[label] = n
    return out


def check_template(template) -> str:
    """The template if it has exactly one ``{}`` and nothing else to fill; else ``InvalidOption``."""
    if not isinstance(template, str):
        raise TypeError(f"template: expected a string, got {type(template).__name__}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:  # a lone "{" or "}"
        raise InvalidOption("template", template, f"must contain {{}} once, where the label goes ({e}; "
                                                  f"write {{{{ or }}}} for a literal brace)") from None
    fields_ = [(name, spec, conv) for _, name, spec, conv in parsed if name is not None]
    if len(fields_) != 1:
        raise InvalidOption("template", template, f"must contain {{}} once, where the label goes "
                                                  f"(found {len(fields_)} replacement fields)")
    name, spec, conv = fields_[0]
    if name or spec or conv:
        raise InvalidOption("template", template, f"must contain {{}} once, where the label goes "
                                                  f"(found {{{name}{'!' + conv if conv else ''}"
                                                  f"{':' + spec if spec else ''}}})")
    return template


def check_templates(templates: Sequence[str]) -> list[str]:
    if isinstance(templates, str):
        templates = [templates]
    out = [check_template(t) for t in templates]
    if not out:
        raise UsageError("templates: empty template list: give at least one template or None")
    return out
