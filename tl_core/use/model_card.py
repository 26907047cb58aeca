"""MODEL_CARD.md: what a received model is, what it was trained and checked on, and how to run it.

Everything in it is measured on the run itself (its split, its validation predictions, its calibration) so the
card cannot drift from the file it travels with.
"""

from __future__ import annotations

import string
from collections import Counter
from dataclasses import dataclass

from tl_core.models.backbones import Preprocessing
from tl_core.train.runs import Run
from tl_core.use.predict import Evaluation, evaluate

SPLITS = ("train", "val", "test")
STRATEGY_WORDS = {"features": "feature extraction (frozen pretrained backbone, new head)",
                  "finetune": "fine-tuning (the last blocks and a new head trained)",
                  "full": "full fine-tuning (every layer trained)"}


@dataclass(frozen=True)
class CardFacts:
    """What the card states about the run, gathered once (the Predict page shows the same card)."""

    run_id: str
    backbone: str
    strategy: str
    classes: list[str]
    counts: dict[str, list[int]]  # split -> images per class, in class order
    preprocessing: Preprocessing
    evaluation: Evaluation | None  # None when the run has no validation split
    multi_label: bool = False  # a set of labels per picture
    pictures: dict[str, int] | None = None  # split -> pictures (a multi-label picture counts under each of its labels)


def facts(run: Run) -> CardFacts:
    classes = run.classes
    counts = {}
    pictures = {}
    for split in SPLITS:
        items = run.split(split)
        per = Counter(y for _, label in items for y in (label if isinstance(label, tuple) else (label,)))
        if per:
            counts[split] = [per.get(i, 0) for i in range(len(classes))]
            pictures[split] = len(items)
    config = run.info["config"]
    return CardFacts(run.id, config["backbone"], config["strategy"], classes, counts,
                     Preprocessing.from_dict(run.info["preprocessing"]), evaluate(run, "val", "cpu") if "val" in counts else None,
                     run.multi_label, pictures)


def _data_table(f: CardFacts) -> str:
    splits = list(f.counts)
    rows = ["| class | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for i, c in enumerate(f.classes):
        rows.append(f"| {_cell(c)} | " + " | ".join(str(f.counts[s][i]) for s in splits) + " |")
    totals = f.pictures or {s: sum(f.counts[s]) for s in splits}
    rows.append("| **pictures** | " + " | ".join(str(totals[s]) for s in splits) + " |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    """A class name as plain Markdown text: names come from folder names a stranger chose, so every ASCII
    punctuation character is backslash-escaped (CommonMark's escape) and line breaks become spaces."""
    return "".join("\\" + ch if ch in string.punctuation else " " if ch in "\r\n" else ch for ch in text)


def _quality(ev: Evaluation | None) -> str:
    if ev is None:
        return "The run has no validation split: no accuracy, per-class figures or calibration can be stated."
    if ev.multi_label:
        rows = [f"Exact-set accuracy (every label of the picture right): **{ev.accuracy:.1%}**; micro F1 "
                f"{ev.micro_f1:.1%}, macro F1 {ev.macro_f1:.1%}, mAP {ev.mean_average_precision:.1%}.", "",
                "| label | precision | recall | F1 | threshold | pictures |", "|---|---|---|---|---|---|"]
        rows += [f"| {_cell(p['class'])} | {p['precision']:.1%} | {p['recall']:.1%} | {p['f1']:.1%} | {p['threshold']:.2f} "
                 f"| {p['support']} |" for p in ev.per_class]
        return "\n".join(rows + ["", "A picture has each label whose probability reaches that label's threshold, chosen on "
                                 "the validation split; it may have none, one or several."])
    balanced = f" Balanced accuracy (the mean of the per-class recall): **{ev.balanced_accuracy:.1%}**." \
        if ev.balanced_accuracy is not None else ""
    rows = [f"Validation accuracy: **{ev.accuracy:.1%}** on {sum(p['support'] for p in ev.per_class)} images.{balanced}", "",
            "| class | precision | recall | images |", "|---|---|---|---|"]
    rows += [f"| {_cell(p['class'])} | {p['precision']:.1%} | {p['recall']:.1%} | {p['support']} |" for p in ev.per_class]
    rows += ["", "Calibration (temperature scaling fitted on the validation split): expected calibration error "
             f"{ev.ece:.3f} before, {ev.ece_calibrated:.3f} after (temperature {ev.temperature:.3f}). The probabilities "
             "the file outputs are the calibrated ones."]
    if ev.threshold is not None:
        rows += ["", f"Unsure threshold: answer \"unsure / none of these\" when the top probability is below "
                 f"**{ev.threshold:.1%}** (keeps 95% of the right validation answers)."]
    return "\n".join(rows)


def _trained_on(f: CardFacts) -> int:
    return (f.pictures or {}).get("train", sum(f.counts.get("train", [0])))


def _use(f: CardFacts) -> str:
    if f.multi_label:
        return (f"Naming which of these {len(f.classes)} labels a picture shows, on pictures like the training ones (same "
                "kind of camera, framing and subject). Labels the model never saw are never named.")
    return (f"Sorting pictures into exactly these {len(f.classes)} classes, on pictures like the training ones (same kind of\n"
            "  camera, framing and subject). A picture of anything else still gets one of these classes: use the unsure\n"
            "  threshold, and look at low-confidence answers yourself.")


def render(f: CardFacts, fmt: str, file_section: str, example: str) -> str:
    """The card as Markdown; `file_section` says what the file computes and how it was checked."""
    names = ", ".join(_cell(c) for c in f.classes)
    kind = (f"**Multi-label**: {len(f.classes)} labels, any number per picture (one sigmoid each), in output order: {names}."
            if f.multi_label else f"{len(f.classes)} classes, in output order: {names}.")
    return f"""# Model card: {f.run_id}

{f.backbone} trained with TL Studio by {STRATEGY_WORDS.get(f.strategy, f.strategy)}; exported as {fmt}.

## Classes and data

{kind}

{_data_table(f)}

## Quality (validation split)

{_quality(f.evaluation)}

## Preprocessing

{f.preprocessing.describe()}; fit `{f.preprocessing.fit}`, resize {f.preprocessing.resize} px, crop
{f.preprocessing.crop} px, mean {list(f.preprocessing.mean)}, std {list(f.preprocessing.std)} (on RGB / 255).

## The file

{file_section}

## Intended use and limits

- {_use(f)}
- Trained on {_trained_on(f)} images: accuracy on other sources can be much lower than above.
  Measure it on your own pictures before relying on it; do not use it for decisions about people.

## Minimal example

```python
{example}```
"""
