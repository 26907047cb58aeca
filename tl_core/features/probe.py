"""A linear head on frozen embeddings, fitted to convergence instead of trained for a few epochs.

Multinomial logistic regression with an L2 penalty, minimised by full-batch L-BFGS (strong Wolfe line search).
The penalty is chosen by stratified k-fold cross-validation on the training rows only, so the validation split
stays an honest estimate. Augmented views ([V, N, D], view 0 clean) are all used for fitting, but only the
clean view of a held-out image is scored, and an image's views always stay in the same fold. With class weights
(imbalanced classes) each row's loss is scaled by its class's weight, and the held-out score that chooses the
strength is weighted the same way: with inverse-frequency weights it is the balanced accuracy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from tl_core.data.targets import Targets

DEFAULT_GRID = tuple(10.0 ** (e / 2) for e in range(-8, 3))  # 1e-4 ... 10, half a decade apart
MAX_ITER = 100  # as scikit-learn's lbfgs: past this, held-out accuracy no longer moves
CHUNK = 25  # L-BFGS iterations between stop checks and progress reports


@dataclass(frozen=True)
class ProbeStep:
    """Progress of the joint fit (every fold, strength and the refit together): a live curve for the dashboard."""

    iteration: int
    max_iterations: int
    loss: float  # the summed objective of all problems


@dataclass
class ProbeResult:
    weight: torch.Tensor  # [C, D] float32, the layout of nn.Linear(D, C).weight
    bias: torch.Tensor  # [C]
    l2: float  # the chosen strength (penalty l2/2 * |W|^2 on standardised features, per mean example loss)
    cv_accuracy: float  # held-out accuracy of the chosen strength across the folds (class-weighted when weighted)
    iterations: int  # L-BFGS iterations (every fold, strength and the refit are solved together)
    seconds: float
    views: int = 1  # 1: fitted on the clean view; V: the augmented views helped in cross-validation
    cv_scores: list[tuple[float, int, float]] = field(default_factory=list)  # (l2, views, CV accuracy) tried


@dataclass
class _Standard:
    """Features are standardised for a well-conditioned problem; the scaling is folded back into W and b."""

    mean: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor) -> _Standard:
        return cls(x.mean(0), x.std(0).clamp_min(1e-6))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


def _as_views(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 2:
        return x.unsqueeze(0)
    if x.dim() != 3:
        raise ValueError(f"embeddings must be [N, D] or [V, N, D], not {list(x.shape)}")
    return x


@contextlib.contextmanager
def _threads_for(flops_per_iteration: float) -> Iterator[None]:
    """One thread for small problems: their products take microseconds, and on a busy CPU the thread pool's
    hand-offs cost 10-25x more than the arithmetic (measured with two cores shared)."""
    before = torch.get_num_threads()
    if flops_per_iteration < 1e9:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_all(
    x: torch.Tensor,
    target: torch.Tensor,
    row_weight: torch.Tensor,
    strengths: torch.Tensor,
    should_stop: Callable[[], bool] | None,
    report: Callable[[int, float], None] | None,
    targets: Targets,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Many independent problems solved as one: for fold f (rows weighted by row_weight[:, f], each column
    summing to 1) and strength g, minimise sum_r w_rf L(x_r W_fg + b_fg, t_r) + l2_g/2 |W_fg|^2, with L the
    cross-entropy of one class, or the binary cross-entropies of every label (`targets.row_loss`; t: dense rows).

    The sum of independent problems has the same minimisers, and one [R, D] x [D, F*G*C] product per L-BFGS
    iteration costs about what one problem's does, so the whole cross-validation runs in one optimiser loop.
    Returns (W [F, G, C, D], b [F, G, C], iterations).
    """
    n_folds, n_grid, d, num_classes = row_weight.shape[1], len(strengths), x.shape[1], target.shape[1]
    w = torch.zeros(n_folds, n_grid, num_classes, d, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(n_folds, n_grid, num_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=CHUNK, history_size=20, tolerance_grad=1e-5,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")
    dense = target.to(x.dtype).view(-1, 1, 1, num_classes)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = (x @ w.reshape(-1, d).T).view(len(target), n_folds, n_grid, num_classes) + b
        per_row = targets.row_loss(logits, dense)  # [R, F, G]
        loss = torch.einsum("rfg,rf->", per_row, row_weight) + 0.5 * (strengths.view(1, -1) * (w * w).sum((2, 3))).sum()
        loss.backward()
        return loss

    done = 0
    while done < MAX_ITER:
        if should_stop and should_stop():
            raise InterruptedError
        loss = opt.step(closure)
        n_iter = opt.state[w]["n_iter"]
        step, done = n_iter - done, n_iter
        if report:
            report(done, float(loss.detach()))
        if step < CHUNK:  # L-BFGS stopped on its own tolerances: converged
            break
    return w.detach(), b.detach(), done


def groups(y: torch.Tensor) -> torch.Tensor:
    """A group per row for stratifying: its class, or in a multi-label set ([N, C] rows) its label set."""
    return y if y.dim() == 1 else torch.unique(y, dim=0, return_inverse=True)[1]


def stratified_folds(y: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """A fold number per row: each class (label set) shuffled and dealt round-robin, so every fold keeps the mix."""
    y = groups(y)
    gen = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(y), dtype=torch.long)
    offset = 0
    for c in torch.unique(y).tolist():
        rows = torch.nonzero(y == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=gen)]
        fold[rows] = (torch.arange(len(rows)) + offset) % folds
        offset += len(rows)
    return fold


@dataclass
class _Fitted:
    """Every (views used, fold, strength) head of one joint fit; the last fold is the refit on all rows."""

    weight: torch.Tensor  # [A, F + 1, G, C, D] in original feature units; A: clean view only, then all views
    bias: torch.Tensor  # [A, F + 1, G, C]
    views: list[int]  # views used by each of the A variants
    strengths: list[float]
    fold: torch.Tensor  # [N] fold of each image
    iterations: int

    def held_out_logits(self, x0: torch.Tensor) -> torch.Tensor:
        """[N, A, G, C]: each image scored by the heads of the fold that held it out."""
        a, f, g, c, _ = self.weight.shape
        out = torch.empty(len(x0), a, g, c, dtype=x0.dtype)
        for k in range(f - 1):
            rows = self.fold == k
            out[rows] = torch.einsum("nd,agcd->nagc", x0[rows], self.weight[:, k]) + self.bias[:, k]
        return out


def _row_weights(n_views: int, fold: torch.Tensor, folds: int,
                 image_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int]]:
    """[V * N, A * (F + 1)]: per problem, each row's share of the mean loss (0 = not in its training rows),
    in proportion to `image_weight` [N] (its class's weight) when given.

    Variant 0 fits the clean view only; with augmented views, variant 1 fits every view of the same images.
    """
    n = len(fold)
    member = torch.ones(n, folds + 1) * (1.0 if image_weight is None else image_weight.view(-1, 1))
    member[torch.arange(n), fold] = 0.0  # fold k's problem leaves its own images out; the last one keeps all
    member = member / member.sum(0)
    clean = torch.cat([member, torch.zeros((n_views - 1) * n, folds + 1)])
    if n_views == 1:
        return clean, [1]
    return torch.cat([clean, member.repeat(n_views, 1) / n_views], 1), [1, n_views]


def _fit_grid(
    xv: torch.Tensor, y: torch.Tensor, num_classes: int, folds: int, grid: tuple[float, ...], seed: int,
    should_stop: Callable[[], bool] | None, on_iteration: Callable[[ProbeStep], None] | None, targets: Targets,
    image_weight: torch.Tensor | None = None,
) -> _Fitted:
    """Heads for every strength, with and without the augmented views, on every fold's training rows and on all
    rows, in one optimisation.

    Features are standardised on all training rows and, when there are fewer rows than dimensions, rotated onto
    the rows' span: the L2 optimum of every fold lies in that span, so the solution is the same, only cheaper.
    """
    n_views, n, d = xv.shape
    x = xv.reshape(-1, d)
    std = _Standard.of(x)
    z = std(x)
    basis = None
    if len(z) < d:
        q, r = torch.linalg.qr(z.T)  # z.T = q r: q's columns are an orthonormal basis of the rows' span
        basis, z = q.T, r.T
    fold = stratified_folds(y, folds, seed)
    row_weight, views = _row_weights(n_views, fold, folds, image_weight)
    strengths = torch.tensor(grid, dtype=x.dtype)
    report = (lambda it, loss: on_iteration(ProbeStep(it, MAX_ITER, loss))) if on_iteration else None
    with _threads_for(4.0 * z.shape[0] * z.shape[1] * row_weight.shape[1] * len(grid) * num_classes):
        dense = targets.dense(y, num_classes).repeat(n_views, 1)
        w, b, iterations = _fit_all(z, dense, row_weight, strengths, should_stop, report, targets)
    if basis is not None:
        w = w @ basis
    weight = w / std.scale  # fold the standardisation in: W (x - m) / s + b = (W / s) x + (b - (W / s) m)
    bias = b - weight @ std.mean
    shape = (len(views), folds + 1, len(grid), num_classes)
    return _Fitted(weight.view(*shape, d), bias.view(shape), views, list(grid), fold, iterations)


def _choose(fitted: _Fitted, x0: torch.Tensor, y: torch.Tensor,
            targets: Targets, image_weight: torch.Tensor | None = None,
            ) -> tuple[tuple[int, int], list[tuple[float, int, float]], torch.Tensor]:
    """The (variant, strength) with the best held-out accuracy (exact-set accuracy for label sets), ties to the
    lower log-loss; both weighted by `image_weight` [N] when given (inverse class frequency: balanced accuracy).

    Returns ((variant, strength index), [(l2, views, accuracy)] for every pair, its out-of-fold probabilities).
    """
    logits = fitted.held_out_logits(x0)  # [N, A, G, C]
    n, c = len(x0), logits.shape[-1]
    share = (torch.ones(n) if image_weight is None else image_weight).double()
    share = (share / share.sum()).view(-1, 1, 1)
    acc = (targets.correct(logits, y.view(n, 1, 1, *y.shape[1:])).double() * share).sum(0)
    nll = (targets.row_loss(logits, targets.dense(y, c).to(logits.dtype).view(n, 1, 1, c)).double() * share).sum(0)
    pairs = [(a, g) for a in range(len(fitted.views)) for g in range(len(fitted.strengths))]
    best = max(pairs, key=lambda p: (round(acc[p].item(), 9), -nll[p].item()))
    scores = [(fitted.strengths[g], fitted.views[a], acc[a, g].item()) for a, g in pairs]
    return best, scores, targets.probabilities(logits[:, best[0], best[1]])


def _prepare(x_train: torch.Tensor, y_train: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views [V, N, D] as float, and the labels: class indices [N], or multi-hot label sets [N, C]."""
    xv = _as_views(x_train.detach().cpu())
    xv = xv.float()
    y = torch.as_tensor(y_train).cpu()
    y = y.float() if y.dim() == 2 else y.long()
    if xv.shape[1] != len(y):
        raise ValueError(f"{xv.shape[1]} embeddings but {len(y)} labels")
    if y.dim() == 2 and y.shape[1] != num_classes:
        raise ValueError(f"label sets must have {num_classes} columns, not {y.shape[1]}")
    if len(y) == 0 or (y.dim() == 1 and (int(y.min()) < 0 or int(y.max()) >= num_classes)):
        raise ValueError(f"labels must be in 0..{num_classes - 1} and there must be at least one row")
    return xv, y


def _n_folds(y: torch.Tensor, folds: int) -> int:
    """No more folds than the largest class (label set) has images (every fold must hold some); at least two."""
    k = min(folds, int(torch.bincount(groups(y)).max()))
    if k < 2:
        raise ValueError("cross-validation needs at least two images of some class")
    return k


def fit_head(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    num_classes: int,
    *,
    folds: int = 5,
    grid: tuple[float, ...] = DEFAULT_GRID,
    seed: int = 0,
    class_weight: torch.Tensor | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_iteration: Callable[[ProbeStep], None] | None = None,
    targets: Targets = Targets(),
) -> ProbeResult:
    """Choose the L2 strength (and whether the augmented views help) by stratified k-fold CV on these rows;
    return the head refitted on all of them with that choice.

    `x_train` is [N, D] or [V, N, D] (view 0 clean); `y_train` class indices [N], or with `MultiLabel` targets
    multi-hot rows [N, C] (one logistic regression per label); `class_weight` [C] scales each class's loss and its
    share of the CV score (one-class data only). Raises InterruptedError when `should_stop()` turns true.
    """
    t0 = time.perf_counter()
    xv, y = _prepare(x_train, y_train, num_classes)
    k = _n_folds(y, folds)
    image_weight = None if class_weight is None or y.dim() == 2 else torch.as_tensor(class_weight, dtype=xv.dtype).cpu()[y]
    fitted = _fit_grid(xv, y, num_classes, k, tuple(grid), seed, should_stop, on_iteration, targets, image_weight)
    (a, g), scores, _ = _choose(fitted, xv[0], y, targets, image_weight)
    cv = next(s for l2, v, s in scores if l2 == grid[g] and v == fitted.views[a])
    return ProbeResult(fitted.weight[a, -1, g].float(), fitted.bias[a, -1, g].float(), float(grid[g]), cv,
                       fitted.iterations, time.perf_counter() - t0, fitted.views[a], scores)


def predict_proba(result: ProbeResult, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities [N, C] for embeddings [N, D] (the clean view of [V, N, D])."""
    x = _as_views(x)[0].float()
    return torch.softmax(x @ result.weight.T + result.bias, 1)


def out_of_fold_proba(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    folds: int = 5,
    grid: tuple[float, ...] = DEFAULT_GRID,
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_iteration: Callable[[ProbeStep], None] | None = None,
    targets: Targets = Targets(),
) -> tuple[torch.Tensor, float]:
    """Every row's probabilities from a head that never saw it (confident learning needs exactly this).

    Returns ([N, C] float32, the L2 strength whose folds produced them, chosen by held-out accuracy).
    """
    xv, yy = _prepare(x, y, num_classes)
    fitted = _fit_grid(xv, yy, num_classes, _n_folds(yy, folds), tuple(grid), seed, should_stop, on_iteration, targets)
    (_, g), _, proba = _choose(fitted, xv[0], yy, targets)
    return proba.float(), float(grid[g])
