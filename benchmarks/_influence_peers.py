"""The peers of skitl's influence engine, run the same way in every benchmark.

kronfluence and captum are optional (benchmarks only). Each function returns
scores with skitl's sign and scale: the predicted increase of the mean
validation loss if the training sample is removed, ``(1/n) g_valᵀ H⁻¹ ∇L_i``.
"""

import copy
import os
import shutil
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F


def _dataset(X, y):
    return torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))


def kronfluence_scores(net, Xtr, ytr, Xv, yv, modules, *, batch_size, query_batch,
                       device="cpu"):
    """kronfluence EK-FAC pairwise scores averaged over the validation set.

    kronfluence's ``g_valᵀ H⁻¹ g_i`` has skitl's sign (positive = helpful);
    damping is its heuristic (``damping_factor=None``: 0.1 x the mean
    eigenvalue of each module), the same rule as skitl's ``damping="auto"``.
    """
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class ClassificationTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

        def get_influence_tracked_modules(self):
            return modules

    task = ClassificationTask()
    model = prepare_model(copy.deepcopy(net).eval(), task)
    out = tempfile.mkdtemp(prefix="kronfluence-")
    try:
        analyzer = Analyzer(analysis_name="bench", model=model, task=task,
                            cpu=not str(device).startswith("cuda"), disable_tqdm=True,
                            output_dir=out)
        train, val = _dataset(Xtr, ytr), _dataset(Xv, yv)
        analyzer.fit_all_factors(factors_name="ekfac", dataset=train,
                                 per_device_batch_size=batch_size,
                                 factor_args=FactorArguments(strategy="ekfac"),
                                 overwrite_output_dir=True)
        analyzer.compute_pairwise_scores(
            scores_name="scores", factors_name="ekfac", query_dataset=val,
            train_dataset=train, per_device_query_batch_size=min(query_batch, len(val)),
            per_device_train_batch_size=batch_size,
            score_args=ScoreArguments(damping_factor=None), overwrite_output_dir=True)
        scores = analyzer.load_pairwise_scores("scores")["all_modules"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return scores.double().mean(0).numpy() / len(Xtr)


def _checkpoint(net):
    path = os.path.join(tempfile.mkdtemp(prefix="captum-"), "net.pt")
    torch.save(net.state_dict(), path)
    return path


def tracin_fast_scores(net, final_fc, Xtr, ytr, Xv, yv, *, batch_size):
    """captum ``TracInCPFast`` with one checkpoint (its final layer only, by design).

    TracIn's ``∇L_valᵀ ∇L_i`` has skitl's sign for the identity Hessian.
    """
    from captum.influence import TracInCPFast

    tr = TracInCPFast(net, final_fc, _dataset(Xtr, ytr), [_checkpoint(net)],
                      loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=batch_size)
    out = tr.influence((torch.from_numpy(Xv), torch.from_numpy(yv)))
    return out.mean(0).detach().double().numpy() / len(Xtr)


def captum_arnoldi_scores(net, Xtr, ytr, Xv, yv, layers, *, batch_size, arnoldi_dim,
                          projection_dim, device="cpu"):
    """captum ``ArnoldiInfluenceFunction`` on ``layers``, averaged over validation."""
    from captum.influence._core.arnoldi_influence_function import (
        ArnoldiInfluenceFunction,
    )

    af = ArnoldiInfluenceFunction(
        net, _dataset(Xtr, ytr), _checkpoint(net), layers=layers,
        loss_fn=nn.CrossEntropyLoss(reduction="none"),
        test_loss_fn=nn.CrossEntropyLoss(reduction="none"), batch_size=batch_size,
        arnoldi_dim=arnoldi_dim, projection_dim=projection_dim, show_progress=False)
    val = (torch.from_numpy(Xv).to(device), torch.from_numpy(yv).to(device))
    return af.influence(val).mean(0).detach().double().cpu().numpy() / len(Xtr)


__all__ = ["captum_arnoldi_scores", "kronfluence_scores", "tracin_fast_scores"]
