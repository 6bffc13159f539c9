"""Head influence: exactness against brute-force leave-one-out and sklearn."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import pearsonr, spearmanr
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from skitl.influence import (
    cross_fit_head_influence,
    extract_features,
    fit_head,
    head_influence,
    influence_scores,
    predict_proba_head,
    trim_weights,
)
from skitl.influence._head import _HeadHessian

ALPHA = 1e-2


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float64)
    return X[:150], y[:150], X[1000:1300], y[1000:1300]


def _val_loss(Fv, yv, W, b):
    P = predict_proba_head(Fv, W, b)
    return -np.log(P[np.arange(len(yv)), yv]).mean()


@pytest.fixture(scope="module")
def loo(digits):
    F, y, Fv, yv = digits
    n = len(F)
    W, b = fit_head(F, y, 10, alpha=ALPHA)
    base = _val_loss(Fv, yv, W, b)
    deltas = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        W2, b2 = fit_head(F[keep], y[keep], 10, alpha=ALPHA, init=(W, b))
        deltas[i] = _val_loss(Fv, yv, W2, b2) - base
    return W, b, deltas


def test_fit_head_matches_sklearn(digits):
    F, y, _, _ = digits
    W, b = fit_head(F, y, 10, alpha=ALPHA)
    lr = LogisticRegression(C=1.0 / (ALPHA * len(F)), tol=1e-12, max_iter=20000).fit(F, y)
    np.testing.assert_allclose(W, lr.coef_, atol=1e-4 * np.abs(W).max())
    np.testing.assert_allclose(predict_proba_head(F, W, b), lr.predict_proba(F), atol=1e-5)
    assert abs(b.sum()) < 1e-10  # the bias is centred


def test_head_matches_leave_one_out(digits, loo):
    F, y, Fv, yv = digits
    W, b, deltas = loo
    res = head_influence(F, y, Fv, yv, n_classes=10, alpha=ALPHA, W=W, b=b)
    assert pearsonr(res.scores, deltas)[0] >= 0.95
    assert spearmanr(res.scores, deltas)[0] >= 0.95
    # Removing any of the 10 lowest-scored (most harmful) samples and
    # refitting lowers the validation loss.
    lowest = np.argsort(res.scores)[:10]
    assert np.all(deltas[lowest] < 0)
    assert res.residual < 1e-8 and res.damping == 0.0


def test_dense_and_cg_agree(digits):
    F, y, Fv, yv = digits
    dense = head_influence(F, y, Fv, yv, n_classes=10, alpha=ALPHA, solver="cholesky")
    cg = head_influence(F, y, Fv, yv, n_classes=10, alpha=ALPHA, solver="cg", tol=1e-12,
                        W=dense.W, b=dense.b)
    assert dense.solver == "cholesky" and cg.solver == "cg"
    rel = np.linalg.norm(dense.scores - cg.scores) / np.linalg.norm(dense.scores)
    assert rel < 1e-6


def test_identity_is_gradient_dot_product(digits):
    F, y, Fv, yv = digits
    W, b = fit_head(F, y, 10, alpha=ALPHA)
    res = head_influence(F, y, Fv, yv, n_classes=10, alpha=ALPHA, W=W, b=b,
                         hessian="identity")
    A = np.hstack([F, np.ones((len(F), 1))])
    Av = np.hstack([Fv, np.ones((len(Fv), 1))])
    R = predict_proba_head(F, W, b) - np.eye(10)[y]
    Rv = predict_proba_head(Fv, W, b) - np.eye(10)[yv]
    grads = np.einsum("ik,id->ikd", R, A).reshape(len(F), -1)
    gval = np.einsum("ik,id->kd", Rv, Av).reshape(-1) / len(Fv)
    np.testing.assert_allclose(res.scores, grads @ gval / len(F), rtol=1e-9, atol=1e-15)


def test_val_weights_equal_subset(digits):
    F, y, Fv, yv = digits
    W, b = fit_head(F, y, 10, alpha=ALPHA)
    w = np.zeros(len(Fv))
    w[:100] = 2.0
    a = head_influence(F, y, Fv, yv, n_classes=10, alpha=ALPHA, W=W, b=b, val_weights=w)
    c = head_influence(F, y, Fv[:100], yv[:100], n_classes=10, alpha=ALPHA, W=W, b=b)
    np.testing.assert_allclose(a.scores, c.scores, rtol=1e-9, atol=1e-15)


def test_float32_vs_float64_features(digits):
    F, y, Fv, yv = digits
    a = head_influence(F, y, Fv, yv, n_classes=10, alpha=ALPHA)
    c = head_influence(F.astype(np.float32), y, Fv.astype(np.float32), yv, n_classes=10,
                       alpha=ALPHA)
    assert spearmanr(a.scores, c.scores)[0] >= 0.99


def test_imagenet_scale_features(digits, loo):
    # Mean ≈ 20, max ≈ 150 features: the regime
    # where a float32 softmax made the Hessian indefinite (measured at n = 5000).
    # An affine map of the features is the same head problem once alpha is
    # rescaled (the bias absorbs the offset), so the LOO deltas carry over.
    F, y, Fv, yv = digits
    scale = 130.0 / (F.max() - F.mean())
    offset = 20.0 - scale * F.mean()
    Fs, Fvs = F * scale + offset, Fv * scale + offset
    assert abs(Fs.mean() - 20) < 1e-6 and abs(Fs.max() - 150) < 1e-6
    alpha = ALPHA * scale**2  # W_scaled = W / scale: the same problem
    res = head_influence(Fs.astype(np.float32), y, Fvs.astype(np.float32), yv,
                         n_classes=10, alpha=alpha)
    assert np.isfinite(res.scores).all() and res.residual < 1e-6
    # The offset only moves the bias: the scores match the unscaled LOO.
    _, _, deltas = loo
    assert pearsonr(res.scores, deltas)[0] >= 0.95
    # A weak penalty on these large features (the ill-conditioned regime):
    # finite, and the two solvers agree.
    dense = head_influence(Fs, y, Fvs, yv, n_classes=10, alpha=1e-3, solver="cholesky")
    cg = head_influence(Fs, y, Fvs, yv, n_classes=10, alpha=1e-3, solver="cg", W=dense.W,
                        b=dense.b, tol=1e-12)
    assert np.isfinite(dense.scores).all()
    rel = np.linalg.norm(dense.scores - cg.scores) / np.linalg.norm(dense.scores)
    assert rel < 1e-5


def test_cross_fit(digits):
    F, y, _, _ = digits
    rng = np.random.default_rng(0)
    y_noisy = y.copy()
    flip = rng.choice(len(y), 15, replace=False)
    y_noisy[flip] = (y[flip] + 1 + rng.integers(0, 9, 15)) % 10
    res = cross_fit_head_influence(F, y_noisy, n_classes=10, cv=3, alpha=ALPHA,
                                   random_state=0, self_influence=True)
    assert res.scores.shape == (len(F),) and np.isfinite(res.scores).all()
    assert res.oof_proba.shape == (len(F), 10)
    np.testing.assert_allclose(res.oof_proba.sum(1), 1.0)
    assert res.self_influence_hessian == "exact" and (res.oof_self_influence > 0).all()
    assert res.solver == "cholesky"
    assert len(res.folds) == 3 and len(res.val_weights_per_fold) == 3
    # The flipped labels are scored as harmful far more often than not.
    is_bad = np.zeros(len(F), bool)
    is_bad[flip] = True
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(is_bad, -res.scores) > 0.8
    # Self-influence with the dense factor matches an explicit inverse.
    tr, va = res.folds[0]
    W, b = fit_head(F[tr], y_noisy[tr], 10, alpha=ALPHA)
    i = va[0]
    r = predict_proba_head(F[i:i + 1], W, b)[0] - np.eye(10)[y_noisy[i]]
    g = np.outer(r, np.append(F[i], 1.0)).ravel()
    H = _explicit_hessian(F[tr], W, b, ALPHA)
    si = g @ np.linalg.lstsq(H, g, rcond=1e-12)[0] / len(tr)
    np.testing.assert_allclose(res.oof_self_influence[i], si, rtol=1e-6)


def test_cross_fit_self_influence_is_opt_in(digits, monkeypatch):
    F, y, _, _ = digits
    exact = cross_fit_head_influence(F, y, n_classes=10, cv=3, alpha=ALPHA, random_state=0,
                                     self_influence=True)

    def no_dense(self, *args, **kwargs):
        raise AssertionError("a dense Hessian was built without self_influence=True")

    # By default no fold builds the dense factor (the solver is chosen by cost
    # alone, CG for these folds) and the self-influence is the gradient norm.
    monkeypatch.setattr(_HeadHessian, "dense", no_dense)
    res = cross_fit_head_influence(F, y, n_classes=10, cv=3, alpha=ALPHA, random_state=0)
    assert res.self_influence_hessian == "identity" and res.solver == "cg"
    rel = np.linalg.norm(res.scores - exact.scores) / np.linalg.norm(exact.scores)
    assert rel < 1e-8  # the same scores as with the factor
    np.testing.assert_allclose(res.oof_proba, exact.oof_proba, rtol=1e-8, atol=1e-12)
    for f, (tr, va) in enumerate(res.folds):
        r = res.oof_proba[va] - np.eye(10)[y[va]]
        sq = (r**2).sum(1) * ((F[va] ** 2).sum(1) + 1.0) / len(tr)
        np.testing.assert_allclose(res.oof_self_influence[va], sq, rtol=1e-10)
        np.testing.assert_array_equal(res.fold_of[va], f)
    # A different quantity that ranks the held-out samples alike (Spearman
    # 0.97 on these digits).
    assert spearmanr(res.oof_self_influence, exact.oof_self_influence)[0] > 0.9
    with pytest.raises(ValueError, match="self_influence=True needs a dense factor"):
        cross_fit_head_influence(F, y, n_classes=10, cv=3, alpha=ALPHA, solver="cg",
                                 self_influence=True)
    with pytest.raises(ValueError, match="self_influence must be True or False"):
        cross_fit_head_influence(F, y, n_classes=10, cv=3, alpha=ALPHA, self_influence="yes")


def _explicit_hessian(F, W, b, alpha):
    n, d = F.shape
    A = np.hstack([F, np.ones((n, 1))])
    P = predict_proba_head(F, W, b)
    k = P.shape[1]
    H = np.zeros((k * (d + 1), k * (d + 1)))
    for i in range(n):
        B = np.diag(P[i]) - np.outer(P[i], P[i])
        H += np.kron(B, np.outer(A[i], A[i]))
    H /= n
    pen = np.tile(np.append(np.full(d, alpha), 0.0), k)
    return H + np.diag(pen)


def test_trim_weights():
    loss = np.array([0.1, 2.0, 0.3, 5.0])
    pred = np.array([0, 1, 2, 0])
    y = np.array([0, 2, 2, 3])
    np.testing.assert_array_equal(trim_weights(loss, pred, y, "auto", user_given=False),
                                  [1, 0, 1, 0])
    np.testing.assert_array_equal(trim_weights(loss, pred, y, "auto", user_given=True),
                                  [1, 1, 1, 1])
    np.testing.assert_array_equal(trim_weights(loss, pred, y, 0.5, user_given=False),
                                  [1, 0, 1, 0])
    np.testing.assert_array_equal(trim_weights(loss, pred, y, 0, user_given=False), [1] * 4)
    with pytest.warns(UserWarning, match="every validation sample"):
        w = trim_weights(loss, pred + 1, y + 7, "auto", user_given=False)
    np.testing.assert_array_equal(w, [1] * 4)
    with pytest.raises(ValueError):
        trim_weights(loss, pred, y, 1.0, user_given=False)


def test_errors(digits):
    F, y, Fv, yv = digits
    bad = F.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        head_influence(bad, y, Fv, yv, n_classes=10, alpha=ALPHA)
    with pytest.raises(ValueError, match="labels"):
        head_influence(F, y + 10, Fv, yv, n_classes=10, alpha=ALPHA)
    with pytest.raises(ValueError, match="val_weights"):
        head_influence(F, y, Fv, yv, n_classes=10, alpha=ALPHA, val_weights=np.zeros(len(Fv)))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                  nn.Dropout(0.5))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.body(x))


def test_extract_features_and_entry_point(digits):
    F, y, Fv, yv = digits
    torch.manual_seed(0)
    net = _Net()
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    X = F.astype(np.float32)
    f1 = extract_features(net, X, layer="fc", batch_size=7)
    f2 = extract_features(net, X, layer="fc", batch_size=256)
    assert f1.dtype == np.float32 and f1.shape == (len(X), 32)
    np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-6)
    assert net.training and all(m.training for m in net.modules())
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k])  # running stats untouched
    # A Dataset yielding (x, y) gives the same features.
    ds = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    np.testing.assert_allclose(extract_features(net, ds, layer="fc"), f2, rtol=1e-6)
    res = influence_scores(net, X, y, Fv.astype(np.float32), yv, alpha=ALPHA)
    direct = head_influence(f2, y, extract_features(net, Fv.astype(np.float32), layer="fc"),
                            yv, n_classes=10, alpha=ALPHA)
    np.testing.assert_allclose(res.scores, direct.scores, rtol=1e-6, atol=1e-12)
    assert set(res.seconds) >= {"features", "fit", "solve", "scores", "total"}
    assert res.params == ["fc.weight", "fc.bias"]
    with pytest.raises(ValueError, match="NaN|infinit"):
        bad = X.copy()
        bad[3, 3] = np.inf
        influence_scores(net, bad, y, X, y)



def test_params_named_after_the_head(digits):
    F, y, Fv, yv = digits
    res = head_influence(F, y, Fv, yv, n_classes=10, alpha=ALPHA)
    assert res.params == ["weight", "bias"]  # not a made-up "head." prefix
    res = head_influence(F, y, Fv, yv, n_classes=10, alpha=ALPHA, W=res.W, b=res.b,
                         head="classifier.3")
    assert res.params == ["classifier.3.weight", "classifier.3.bias"]


# ---------------------------------------------------------------------------
# Target-aware cross-fitting
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed(digits):
    """150 digits: 90 target samples, 60 auxiliary ones (every class in both)."""
    F, y, _, _ = digits
    target = np.zeros(len(F), bool)
    target[np.random.default_rng(0).permutation(len(F))[:90]] = True
    return F, y, target


def _by_hand(F, y, folds, **kw):
    """Per-fold head_influence computed directly: score sums and counts."""
    total, count = np.zeros(len(F)), np.zeros(len(F))
    probas = []
    for tr, va in folds:
        W, b = fit_head(F[tr], y[tr], 10, alpha=ALPHA)
        pv = predict_proba_head(F[va], W, b)
        loss = -np.log(pv[np.arange(len(va)), y[va]])
        w = trim_weights(loss, pv.argmax(1), y[va], "auto", user_given=False)
        res = head_influence(F[tr], y[tr], F[va], y[va], n_classes=10, alpha=ALPHA, W=W,
                             b=b, val_weights=w, **kw)
        total[tr] += res.scores
        count[tr] += 1
        probas.append(predict_proba_head(F, W, b))
    return total, count, probas


def test_target_folds_validate_on_target_only(mixed):
    F, y, target = mixed
    res = cross_fit_head_influence(F, y, n_classes=10, cv=3, alpha=ALPHA, random_state=0,
                                   target=target)
    assert len(res.folds) == 3
    held_out = np.concatenate([va for _, va in res.folds])
    np.testing.assert_array_equal(np.sort(held_out), np.flatnonzero(target))
    for tr, va in res.folds:
        assert target[va].all()
        np.testing.assert_array_equal(np.sort(np.r_[tr, va]), np.arange(len(F)))
        assert (~target[tr]).sum() == (~target).sum()  # every auxiliary sample trains
        # stratified over the target labels
        np.testing.assert_array_less(np.abs(np.bincount(y[va], minlength=10) * 3
                                            - np.bincount(y[target], minlength=10)), 3)
    np.testing.assert_array_equal(res.target, target)
    assert np.isfinite(res.oof_self_influence[target]).all()
    assert np.isnan(res.oof_self_influence[~target]).all()


def test_target_scores_equal_per_fold_head_influence(mixed):
    F, y, target = mixed
    res = cross_fit_head_influence(F, y, n_classes=10, cv=3, alpha=ALPHA, random_state=0,
                                   target=target)
    total, count, probas = _by_hand(F, y, res.folds)
    np.testing.assert_array_equal(count[~target], 3)  # against every target fold
    np.testing.assert_array_equal(count[target], 2)  # out of fold
    # Each fold's Newton starts from the previous fold's head, the by-hand
    # fits from zero: both reach the same minimiser to the fit tolerance
    # (measured differences ~1e-12 relative).
    np.testing.assert_allclose(res.scores, total / count, rtol=1e-9, atol=1e-14)
    # auxiliary probabilities: the in-sample mean over the fold heads
    mean = np.mean(probas, axis=0)
    np.testing.assert_allclose(res.oof_proba[~target], mean[~target], rtol=1e-9, atol=1e-14)
    for (_, va), P in zip(res.folds, probas):
        np.testing.assert_allclose(res.oof_proba[va], P[va], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(res.oof_loss, -np.log(res.oof_proba[np.arange(len(y)), y]))


def test_target_all_true_is_plain_cross_fitting(mixed):
    F, y, _ = mixed
    a = cross_fit_head_influence(F, y, n_classes=10, cv=3, alpha=ALPHA, random_state=0)
    c = cross_fit_head_influence(F, y, n_classes=10, cv=3, alpha=ALPHA, random_state=0,
                                 target=np.ones(len(F), bool))
    for (tr, va), (tr2, va2) in zip(a.folds, c.folds):
        np.testing.assert_array_equal(tr, tr2)
        np.testing.assert_array_equal(va, va2)
    for name in ("scores", "oof_proba", "oof_self_influence"):
        np.testing.assert_array_equal(getattr(a, name), getattr(c, name))
    assert a.target is None


def test_target_class_absent_from_target_part(mixed):
    F, y, target = mixed
    t = target & (y != 4)  # class 4 only among the auxiliary samples
    res = cross_fit_head_influence(F, y, n_classes=10, cv=3, alpha=ALPHA, random_state=0,
                                   target=t)
    assert np.isfinite(res.scores).all()
    assert all((y[va] != 4).all() for _, va in res.folds)
    assert (res.oof_proba[y == 4].argmax(1) == 4).mean() > 0.5  # still learnt


def test_target_errors(mixed):
    F, y, target = mixed
    kw = dict(n_classes=10, cv=3, alpha=ALPHA, random_state=0)
    with pytest.raises(ValueError, match=r"target must have shape \(150,\)"):
        cross_fit_head_influence(F, y, target=target[:-1], **kw)
    with pytest.raises(ValueError, match="boolean mask, got dtype int64"):
        cross_fit_head_influence(F, y, target=target.astype(np.int64), **kw)
    with pytest.raises(ValueError, match="selects no sample"):
        cross_fit_head_influence(F, y, target=np.zeros(len(F), bool), **kw)
    short = target.copy()
    short[np.flatnonzero(target & (y == 7))[2:]] = False  # 2 target sevens left
    n7 = int((y == 7).sum())
    with pytest.raises(ValueError, match=rf"class 7 has 2 \(of {n7} in all\)"):
        cross_fit_head_influence(F, y, target=short, **kw)
    with pytest.raises(ValueError, match=r"cv=3 folds need at least 3 target samples"):
        cross_fit_head_influence(F, y, target=short, **kw)
    # the same check without a target names the class too
    with pytest.raises(ValueError, match=r"class 9 has 1"):
        cross_fit_head_influence(F[y != 9][:100].tolist() + [F[y == 9][0].tolist()],
                                 np.r_[y[y != 9][:100], 9], **kw)
