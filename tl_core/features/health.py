"""What is wrong with a dataset, read from a frozen backbone's embeddings: likely label mistakes, near-duplicates
(leakage across splits, one picture under two classes), outliers, class imbalance, and a 2-D map of it all.

Label mistakes come from confident learning (cleanlab) on out-of-fold probabilities of the fitted linear head:
every image is judged by a head that never saw it. Near-duplicates use centred, unit-length embeddings, so the
features every photo shares (ReLU outputs are all positive) do not make unrelated pictures look alike. Outliers use
the raw directions instead: centring turns every weakly-activating picture (noise, a document, a placeholder) into
"minus the mean", so off-domain images become each other's close neighbours and hide (measured on ants vs bees).
Embeddings alone miss some shrunk, re-encoded copies (cosine just under the cut), so a 64-bit DCT perceptual hash
of every picture runs beside them: a copy keeps its hash within a few bits, and identical files are named as such.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image

from tl_core import plan
from tl_core.config import TrainConfig
from tl_core.data import targets
from tl_core.data.balance import balanced_accuracy
from tl_core.data.images import content_hash
from tl_core.data.scan import imbalance_ratio
from tl_core.data.sources import ImageDataset, Problem, Sample
from tl_core.features.probe import out_of_fold_proba
from tl_core.formats import percent

NEAR_DUPLICATE = 0.75  # cosine of centred embeddings (MobileNetV2, ants vs bees): resized + re-encoded copies
#                        scored 0.77-0.89, the closest two distinct photos 0.65
HASH_BITS = 8  # Hamming distance of 64-bit DCT hashes counted as a copy: shrunk (80% or 50%) and re-encoded (JPEG 80
#              or 50) copies of 57 ants vs bees photos differed by 0-4 bits, the closest two distinct photos of its 396 by 12
OUTLIER_Z = 3.5  # robust z-score of the neighbour similarity (the usual modified z-score cut-off)
MAX_PAIRS = 500
TSNE_MAX = 1000  # t-SNE keeps neighbourhoods better than PCA; past this many images it takes too long


@dataclass
class Suspect:
    """An image whose given label the out-of-fold head disputes; `quality` is low when likely wrong."""

    path: str
    split: str
    given: str
    suggested: str
    quality: float  # out-of-fold probability of the given label (cleanlab's self-confidence)
    confidence: float  # out-of-fold probability of the suggested label
    flagged: bool  # cleanlab's confident-learning filter flags it (else the head merely disagrees)


@dataclass
class NearDuplicate:
    a: str
    b: str
    split_a: str
    split_b: str
    class_a: str
    class_b: str
    similarity: float  # cosine of the embeddings, or the share of equal hash bits when found by the hash
    found_by: str = "embeddings"  # or "perceptual hash", "identical files"

    @property
    def exact(self) -> bool:
        """The very same file twice (byte for byte)."""
        return self.found_by == IDENTICAL

    @property
    def cross_split(self) -> bool:
        """The same picture in training and evaluation: the validation score is inflated."""
        return self.split_a != self.split_b

    @property
    def cross_class(self) -> bool:
        return self.class_a != self.class_b


@dataclass
class Outlier:
    path: str
    split: str
    label: str
    z: float  # how many robust deviations its nearest neighbours are further than usual


@dataclass
class ClassBalance:
    counts: dict[str, int]  # training images per class
    ratio: float  # largest class / smallest class
    recall: dict[str, float]  # out-of-fold accuracy within each class
    accuracy: float
    balanced_accuracy: float

    @property
    def note(self) -> str:
        """The imbalance and what it costs, in one sentence."""
        small = min(self.counts, key=self.counts.get)
        cost = self.accuracy - self.balanced_accuracy
        return (f"Largest class / smallest: {self.ratio:.1f}x ({small}: {self.counts[small]} training images). "
                f"Out-of-fold accuracy {percent(self.accuracy)}, balanced over classes {percent(self.balanced_accuracy)}"
                + (f": the smaller classes cost {cost * 100:.1f} points." if cost > 0.005 else "."))


@dataclass
class MapPoint:
    path: str
    split: str
    label: str
    x: float
    y: float
    suspect: bool
    outlier: bool = False

    @property
    def mark(self) -> str:
        """How the map draws it: what the checks say of this image."""
        return "outlier" if self.outlier else "suspect" if self.suspect else "ok"


@dataclass
class HealthReport:
    backbone: str
    classes: list[str]
    n_images: int
    suspects: list[Suspect]
    duplicates: list[NearDuplicate]
    outliers: list[Outlier]
    balance: ClassBalance
    points: list[MapPoint]
    projection: str  # t-SNE or PCA
    l2: float  # the head's regularisation used for the out-of-fold probabilities
    seconds: float
    problems: list[Problem] = field(default_factory=list)  # files that could not be embedded

    def to_dict(self, with_points: bool = False) -> dict:
        d = asdict(self)
        d["duplicates"] = [{**asdict(p), "cross_split": p.cross_split, "cross_class": p.cross_class, "exact": p.exact}
                           for p in self.duplicates]
        d["balance"]["note"] = self.balance.note
        if not with_points:
            d.pop("points")
        return d


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    x = x.float() - x.float().mean(0)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)


def label_names(s: Sample, classes: list[str]) -> str:
    """A picture's class, or its label set joined by '; '."""
    return "; ".join(classes[y] for y in s.labels) if s.labels else classes[s.label]


def label_set_suspects(proba: torch.Tensor, truth: torch.Tensor, samples: list[Sample], classes: list[str]) -> list[Suspect]:
    """Multi-label pictures whose given label set the out-of-fold heads dispute: cleanlab's multi-label filter,
    ranked by its label-quality score, then the pictures whose out-of-fold set (each sigmoid at 0.5) differs."""
    from cleanlab.filter import find_label_issues
    from cleanlab.multilabel_classification import get_label_quality_scores

    p, given = proba.double().numpy(), [[c for c in range(len(classes)) if row[c] > 0.5] for row in truth.tolist()]
    quality = get_label_quality_scores(given, p)
    flagged = [int(i) for i in find_label_issues(given, p, multi_label=True, return_indices_ranked_by="self_confidence",
                                                 n_jobs=1)]
    said = p >= 0.5
    rest = [int(i) for i in np.argsort(quality, kind="stable")
            if (said[i] != (truth[i].numpy() > 0.5)).any() and i not in set(flagged)]
    return [Suspect(samples[i].path, samples[i].split, label_names(samples[i], classes),
                    "; ".join(c for c, on in zip(classes, said[i]) if on) or "none of the labels",
                    round(float(quality[i]), 4), round(float(np.abs(p[i] - 0.5).min() + 0.5), 4), n < len(flagged))
            for n, i in enumerate(flagged + rest)]


def mislabel_suspects(proba: torch.Tensor, labels: torch.Tensor, samples: list[Sample], classes: list[str]) -> list[Suspect]:
    """cleanlab's confident-learning filter (prune by noise rate) ranked by self-confidence, most suspect first;
    then the other images whose out-of-fold head prefers another class, also by self-confidence."""
    from cleanlab.filter import find_label_issues

    p = proba.double().numpy()
    p = p / p.sum(1, keepdims=True)
    y = labels.numpy()
    if len(np.unique(y)) < 2:
        return []
    flagged = [int(i) for i in find_label_issues(y, p, return_indices_ranked_by="self_confidence", n_jobs=1)]
    quality = p[np.arange(len(y)), y]
    rest = [int(i) for i in np.argsort(quality, kind="stable") if p[i].argmax() != y[i] and i not in set(flagged)]
    return [Suspect(samples[i].path, samples[i].split, classes[y[i]], classes[int(p[i].argmax())],
                    round(float(quality[i]), 4), round(float(p[i].max()), 4), n < len(flagged))
            for n, i in enumerate(flagged + rest)]


def near_duplicates(e: torch.Tensor, samples: list[Sample], classes: list[str],
                    threshold: float = NEAR_DUPLICATE, block: int = 1024) -> list[NearDuplicate]:
    """Pairs whose unit embeddings have cosine >= threshold, most similar first (blocked: memory stays N x block)."""
    found: list[tuple[float, int, int]] = []
    for start in range(0, len(e), block):
        sim = e[start : start + block] @ e.T
        rows, cols = torch.nonzero(sim >= threshold, as_tuple=True)
        for r, c in zip(rows.tolist(), cols.tolist()):
            if start + r < c:
                found.append((sim[r, c].item(), start + r, c))
    found.sort(reverse=True)
    return [NearDuplicate(samples[i].path, samples[j].path, samples[i].split, samples[j].split,
                          label_names(samples[i], classes), label_names(samples[j], classes), round(s, 4))
            for s, i, j in found[:MAX_PAIRS]]


IDENTICAL, HASHED = "identical files", "perceptual hash"
_DCT = np.cos(np.pi / 32 * (np.arange(32)[None, :] + 0.5) * np.arange(32)[:, None])  # rows: DCT-II basis of length 32


def perceptual_hash(path: str) -> int | None:
    """64-bit pHash: grey 32 x 32, 2-D DCT, each of the 8 x 8 lowest frequencies above or below their median (the
    constant term left out of the median). Resizing and JPEG re-encoding move few of these bits. None: unreadable."""
    try:
        with Image.open(path) as im:
            im.draft("L", (64, 64))  # JPEG: decode at reduced size, far faster than the full picture
            grey = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    low = (_DCT @ grey @ _DCT.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hash_duplicates(samples: list[Sample], classes: list[str], max_bits: int = HASH_BITS,
                    block: int = 1024) -> list[NearDuplicate]:
    """Pairs whose perceptual hashes differ in at most `max_bits` bits; identical files (same bytes) say so."""
    hashes = [perceptual_hash(s.path) for s in samples]
    keep = [i for i, h in enumerate(hashes) if h is not None]
    h = np.array([hashes[i] for i in keep], dtype=np.uint64)
    found: list[NearDuplicate] = []
    for start in range(0, len(h), block):
        bits = np.bitwise_count(h[start : start + block, None] ^ h[None, :])
        for r, c in zip(*np.nonzero(bits <= max_bits)):
            i, j = keep[start + int(r)], keep[int(c)]
            if i < j:
                a, b = samples[i], samples[j]
                same = bits[r, c] == 0 and content_hash(a.path) == content_hash(b.path)
                found.append(NearDuplicate(a.path, b.path, a.split, b.split, label_names(a, classes), label_names(b, classes),
                                           round(1 - int(bits[r, c]) / 64, 4), IDENTICAL if same else HASHED))
    return found


def merge_duplicates(*found: list[NearDuplicate]) -> list[NearDuplicate]:
    """One entry per pair (identical files first, then the hash, then embeddings), most similar first."""
    rank = {IDENTICAL: 0, HASHED: 1}
    best: dict[frozenset[str], NearDuplicate] = {}
    for p in (p for pairs in found for p in pairs):
        key = frozenset((p.a, p.b))
        if key not in best or rank.get(p.found_by, 2) < rank.get(best[key].found_by, 2):
            best[key] = p
    return sorted(best.values(), key=lambda p: (rank.get(p.found_by, 2), -p.similarity))[:MAX_PAIRS]


def copies_and_near_duplicates(e: torch.Tensor, samples: list[Sample], classes: list[str]) -> list[NearDuplicate]:
    """Both duplicate checks: embeddings find similar pictures, the perceptual hash finds every shrunk or
    re-encoded copy and identical files."""
    return merge_duplicates(hash_duplicates(samples, classes), near_duplicates(e, samples, classes))


def neighbour_outliers(x: torch.Tensor, samples: list[Sample], classes: list[str], k: int = 5,
                       block: int = 1024) -> list[Outlier]:
    """Images whose k nearest neighbours (any class, raw cosine) are unusually far: robust z-score above OUTLIER_Z."""
    if len(x) <= k + 1:
        return []
    e = torch.nn.functional.normalize(x.float(), dim=1)
    score = torch.empty(len(e))
    for start in range(0, len(e), block):
        sim = e[start : start + block] @ e.T
        sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))] = -2.0  # not its own neighbour
        score[start : start + len(sim)] = sim.topk(k, dim=1).values.mean(1)
    median = score.median()
    mad = (score - median).abs().median().clamp_min(1e-6) * 1.4826
    z = (median - score) / mad
    order = torch.argsort(z, descending=True)
    return [Outlier(samples[i].path, samples[i].split, label_names(samples[i], classes), round(z[i].item(), 2))
            for i in order.tolist() if z[i] > OUTLIER_Z]


def class_balance(proba: torch.Tensor, labels: torch.Tensor, samples: list[Sample], classes: list[str]) -> ClassBalance:
    """Training pictures per class (per label: a multi-label picture counts under each of its labels) and the
    out-of-fold recall of each; accuracy is exact-set accuracy for label sets."""
    counts = dict.fromkeys(classes, 0)
    for s in samples:
        if s.split == "train":
            for y in s.labels or (s.label,):
                counts[classes[y]] += 1
    if labels.dim() == 2:  # label sets: each label's recall among the pictures that have it
        said, has = proba >= 0.5, labels > 0.5
        correct = (said == has).all(1)
        recall = {c: said[has[:, i], i].float().mean().item() for i, c in enumerate(classes) if has[:, i].any()}
    else:
        correct = proba.argmax(1) == labels
        recall = {c: correct[labels == i].float().mean().item() for i, c in enumerate(classes) if (labels == i).any()}
    return ClassBalance(counts, imbalance_ratio(list(counts.values())), recall, correct.float().mean().item(),
                        balanced_accuracy(list(recall.values())))


def project(x: torch.Tensor, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates: t-SNE (on 50 principal components) for small sets, PCA beyond TSNE_MAX images."""
    xc = x.float() - x.float().mean(0)
    q = min(50, *xc.shape)
    _, _, v = torch.pca_lowrank(xc, q=q, center=False)
    pcs = (xc @ v).numpy()
    if len(x) < 5:
        return np.pad(pcs[:, :2], ((0, 0), (0, max(0, 2 - pcs.shape[1])))), "PCA"
    if len(x) > TSNE_MAX:
        return pcs[:, :2], "PCA"
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = float(min(30, (len(x) - 1) / 3))
    with threadpool_limits(1):  # its OpenMP threads spin: 2 s on one core, 40 s on two busy ones (measured)
        xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500).fit_transform(pcs)
    return xy, "t-SNE"


def health_from_embeddings(x: torch.Tensor, samples: list[Sample], classes: list[str], backbone: str = "",
                           should_stop: Callable[[], bool] | None = None, seed: int = 0) -> HealthReport:
    """Every check on clean-view embeddings x [N, D] of `samples` (all splits together)."""
    t0 = time.perf_counter()
    answers = targets.of(any(s.labels for s in samples))
    labels = answers.tensor([s.target for s in samples], len(classes))
    proba, l2 = out_of_fold_proba(x, labels, len(classes), seed=seed, should_stop=should_stop, targets=answers)
    e = unit_rows(x)
    suspects = (label_set_suspects if answers.multi_label else mislabel_suspects)(proba, labels, samples, classes)
    outliers = neighbour_outliers(x, samples, classes)
    coords, projection = project(x, seed)
    flagged, far = {s.path for s in suspects}, {o.path for o in outliers}
    points = [MapPoint(s.path, s.split, label_names(s, classes), float(cx), float(cy), s.path in flagged, s.path in far)
              for s, (cx, cy) in zip(samples, coords)]
    return HealthReport(backbone, classes, len(samples), suspects, copies_and_near_duplicates(e, samples, classes),
                        outliers, class_balance(proba, labels, samples, classes),
                        points, projection, l2, time.perf_counter() - t0)


def check_health(ds: ImageDataset, backbone: str = "mobilenet_v2", *, image_size: int | None = None,
                 fit: str = TrainConfig.fit, device: str | None = None, progress: Callable[[str, int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> HealthReport:
    """Embed every image once (cached, clean view), then run every check; the user's overrides apply first."""
    from tl_core.data.overrides import apply_overrides
    from tl_core.features.frozen import FrozenBackbone, embed_dataset

    t0 = time.perf_counter()
    ds = apply_overrides(ds)
    config = plan.check(TrainConfig(backbone=backbone, image_size=image_size, fit=fit, device=device))
    frozen = FrozenBackbone.for_plan(plan.for_images(config, [s.path for s in ds.samples]))  # the pixels training sees
    parts = embed_dataset(ds, frozen, progress=progress, should_stop=should_stop).values()
    x = torch.cat([p.x[0] for p in parts if p.samples])
    samples = [s for p in parts for s in p.samples]
    report = health_from_embeddings(x, samples, ds.classes, backbone, should_stop)
    report.problems = [q for p in parts for q in p.problems]
    report.seconds = time.perf_counter() - t0
    return report
