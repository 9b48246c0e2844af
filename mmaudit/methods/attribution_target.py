"""Which scalar of a model's output an attribution explains, and a tokenizer sanity test.

``Target`` turns a run's target kind (binary with one or two logits, multiclass,
multilabel) into the score that Integrated Gradients, SHAP and the modality shares
attribute, and into the signed class views the word rankings show. Two checks explain
the same scores (``attribution`` and ``attention``), so it lives here, below both.

``unknown_tokens`` says why reports cannot be read word by word: a tokenizer that maps
nearly every report token to ``[UNK]`` is the wrong one, and any word-level view of its
output would rank ``[UNK]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config import AuditConfig
    from mmaudit.engine.data import AuditDataset, Batch
    from mmaudit.methods.integrated_gradients import ScoreFn

#: a tokenizer that maps at least this share of report tokens to [UNK] cannot be attributed
UNK_LIMIT = 0.9


class AuditedRun(Protocol):
    """What ``Target`` reads of an audit: the target kind (config), the class names
    (dataset) and the logits of the full sweep (cache). A check's ``AuditContext`` is one."""

    @property
    def config(self) -> AuditConfig: ...

    @property
    def dataset(self) -> AuditDataset: ...

    @property
    def cache(self) -> InferenceCache: ...


@dataclass
class Target:
    """Which scalar of the output is attributed, and the classes words are ranked for.

    * one logit (binary): that logit; the ranking for the positive class is the mean
      attribution, for the negative class its negation (the logit of "not positive");
    * two logits, binary: ``logit[1] - logit[0]``, ranked the same way;
    * one label column of a multilabel target (``label``): that label's logit, as a binary
      target of its own -- ranked toward the label and, negated, toward "not <label>",
      both over every sample (a multilabel sample may be positive for none or several);
    * multiclass: each sample's predicted class (arg-max logit); the ranking for class
      ``c`` uses the samples predicted ``c``.
    """

    mode: Literal["single", "diff", "column"]
    column: np.ndarray  # (N,) logit column per sample (mode "column")
    classes: list[tuple[str, float, np.ndarray | None]]  # name, sign, samples (None: all)

    sign: np.ndarray | None = None  # (N,) +-1 per sample: explain the predicted class
    output: int = 0  # the logit mode "single" attributes
    label: str | None = None  # the multilabel label column attributed (mode "single")

    @classmethod
    def of(cls, ctx: AuditedRun, predicted: bool = False, label: int = 0) -> Target:
        """The target for ``ctx``; ``predicted=True`` turns the binary (or label) score
        toward each sample's predicted class (the negated logit where the prediction is
        negative). ``label``: the label column a multilabel target is explained for."""
        if ctx.config.data.target.kind == "multilabel":
            return cls.for_label(ctx, label, predicted)
        logits = ctx.cache.sweep().logits
        names = ctx.dataset.class_names
        n, k = logits.shape
        if ctx.config.data.target.kind != "binary" or k > 2:
            pred = logits.argmax(1).astype(np.int64)
            labels = names if len(names) == k else [str(c) for c in range(k)]
            return cls("column", pred, [(labels[c], 1.0, pred == c) for c in range(k)])
        pos, neg = (names[1], names[0]) if len(names) == 2 else ("1", "0")
        mode: Literal["single", "diff", "column"] = "single" if k == 1 else "diff"
        target = cls(mode, np.zeros(n, np.int64), [(pos, 1.0, None), (neg, -1.0, None)])
        if predicted:
            target.sign = np.where(target.scores(logits) >= 0, 1.0, -1.0)
        return target

    @classmethod
    def for_label(cls, ctx: AuditedRun, label: int, predicted: bool = False) -> Target:
        """Label column ``label`` of a multilabel target as a binary target of its own."""
        logits = ctx.cache.sweep().logits
        n, k = logits.shape
        if not 0 <= label < k:
            raise ValueError(f"target_class={label}: the model has {k} label columns (0..{k - 1})")
        names = ctx.dataset.class_names
        name = names[label] if len(names) == k else str(label)
        classes: list[tuple[str, float, np.ndarray | None]] = [
            (name, 1.0, None),
            (f"not {name}", -1.0, None),
        ]
        target = cls("single", np.zeros(n, np.int64), classes, output=label, label=name)
        if predicted:
            target.sign = np.where(target.scores(logits) >= 0, 1.0, -1.0)
        return target

    @classmethod
    def every_label(cls, ctx: AuditedRun) -> list[Target]:
        """One binary target per label column (multilabel), else ``[Target.of(ctx)]``."""
        if ctx.config.data.target.kind != "multilabel":
            return [cls.of(ctx)]
        k = ctx.cache.sweep().logits.shape[1]
        return [cls.for_label(ctx, j) for j in range(k)]

    def score_fn(self) -> ScoreFn:
        """The attributed score per row of a batch (rows know their dataset index)."""
        column = torch.from_numpy(self.column)
        sign = None if self.sign is None else torch.from_numpy(self.sign).float()
        output = self.output

        def fn(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
            index = batch.index
            if self.mode == "single":
                score = logits[:, output]
            elif self.mode == "diff":
                score = logits[:, 1] - logits[:, 0]
            else:
                idx = column.to(logits.device)[index]
                score = logits.gather(1, idx[:, None])[:, 0]
            if sign is not None:
                score = score * sign.to(logits.device)[index].to(score.dtype)
            return score

        return fn

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """The attributed score of every sample from a sweep's logits (N, K)."""
        if self.mode == "single":
            score = logits[:, self.output].astype(float)
        elif self.mode == "diff":
            score = (logits[:, 1] - logits[:, 0]).astype(float)
        else:
            score = logits[np.arange(len(logits)), self.column].astype(float)
        return score if self.sign is None else score * self.sign

    @property
    def description(self) -> str:
        if self.label is not None:
            text = f"the logit of label {self.label} (label column {self.output})"
            if self.sign is not None:
                text += f", negated where {self.label} is predicted negative (logit < 0)"
            return text
        if self.sign is not None:
            return "the logit of each sample's predicted class"
        if self.mode == "single":
            return f"the logit of the positive class ({self.classes[0][0]})"
        if self.mode == "diff":
            return "logit[1] - logit[0]"
        return "the logit of each sample's predicted class"

    def score_label(self, name: str, sign: float) -> str:
        """The score a class view shows, in short: the attributed score, negated (sign -1)
        for the negative class of a binary model: ``logit(1)``, ``-logit(1)``,
        ``logit(1) - logit(0)``, ``logit(0) - logit(1)``, or ``logit(c)``."""
        if self.mode == "column":
            return f"logit({name})"
        pos, neg = self.classes[0][0], self.classes[1][0]
        if self.mode == "single":
            return f"logit({pos})" if sign > 0 else f"-logit({pos})"
        return f"logit({pos}) - logit({neg})" if sign > 0 else f"logit({neg}) - logit({pos})"

    def sign_note(self) -> str:
        """The first note of the check: what is attributed and how class views are signed."""
        text = f"attributions explain {self.description}"
        if self.mode == "column" or self.sign is not None:
            return text
        (pos, _, _), (neg, _, _) = self.classes
        return (
            f"{text}; every view toward class {neg} (its rows of word_ranking, its"
            " examples) shows them negated, i.e. the attribution of"
            f" {self.score_label(neg, -1.0)}: a word at +x toward class {neg} moves"
            f" {self.score_label(pos, 1.0)} by -x. Both rankings use every report; the"
            f" direction column of word_ranking and logit_attribution (the attribution of"
            f" {self.score_label(pos, 1.0)} itself) say which is which"
        )


def unknown_tokens(tokenizer: Any, input_ids: torch.Tensor, content: torch.Tensor) -> str | None:
    """Why the reports cannot be read word by word: the tokenizer maps at least
    ``UNK_LIMIT`` of the ``content`` tokens to [UNK] (a wrong tokenizer); else None."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not bool(content.any()):
        return None
    share = float((input_ids[content] == int(unk)).float().mean())
    if share >= UNK_LIMIT:
        return (
            f"the tokenizer maps {share:.0%} of report tokens to [UNK]: is"
            " data.text.tokenizer the one the model was trained with?"
        )
    return None
