"""The LightningModule: one learned reconstruction model, its loss and its metrics."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from pet_dl.metrics import dilate_mask
from pet_dl.models import build_model
from pet_dl.training.batching import BatchGeometry, to_recon_batch
from pet_dl.training.losses import ERRORS as LOSSES
from pet_dl.training.losses import (
    hot_spot_error,
    lesion_max_error,
    lesion_mean_error,
    lesion_weights,
    nrmse_error,
    weighted_error,
)

#: Dilation of the true lesions, voxels, before the false-hot-spot term leaves them out (as
#: :func:`pet_dl.evaluate.false_hot_spots` counts).
HOT_SPOT_LESION_DILATION = 2


class ReconModule(pl.LightningModule):
    """Trains a network from :func:`pet_dl.models.build_model` on paired scans.

    The loss compares prediction and target (true activity, Bq/mL) after dividing both by
    the target's mean over the image (per scan), so scans of any count level and
    activity weigh alike. With ``lesion_weight > 0`` each voxel of the batch's
    ``lesion_mask`` (dilated by ``lesion_dilation`` voxels) weighs ``1 + lesion_weight``
    (:mod:`pet_dl.training.losses`), so smoothing lesions away costs the network.

    Args:
        network: model config, e.g. ``{"name": "unrolled_em", "spatial_dims": 2}``.
        loss: ``"l1"``, ``"mse"`` or ``"smooth_l1"`` (:func:`pet_dl.training.losses.weighted_error`).
        smooth_l1_beta: the smooth L1 threshold on images divided by the target mean
            (dimensionless; about the noise level of the output: quadratic below, linear
            above).
        ssim_weight: weight of ``1 - SSIM`` added to the loss (0: off).
        lesion_weight: extra weight of a lesion voxel in the L1 / MSE term (0: off).
        lesion_dilation: lesion mask dilation radius for that weight, voxels.
        lesion_mean_weight: weight of the mean absolute relative lesion SUVmean bias
            (:func:`pet_dl.training.losses.lesion_mean_error`; 0: off).
        lesion_max_weight: weight of the mean absolute relative lesion SUVmax bias
            (:func:`pet_dl.training.losses.lesion_max_error`; 0: off).
        nrmse_weight: weight of the batch's mean NRMSE, the evaluation's image metric
            (:func:`pet_dl.training.losses.nrmse_error`; 0: off).
        hot_spot_weight: weight of the false-hot-spot term
            (:func:`pet_dl.training.losses.hot_spot_error`: 4 mm-ball means of the
            prediction more than ``hot_spot_threshold`` above the truth blurred by the
            batch's PSF, outside the true lesions dilated by 2 voxels; 0: off). Needs
            batches with a ``lesion_mask``.
        hot_spot_threshold: the relative excess above which that term acts (> 0).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        cosine_steps: cosine learning-rate decay over this many steps (0: constant).
        init_weights: start from the weights of a pet_dl ``.safetensors`` checkpoint of
            the same network (fine-tuning, e.g. the shipped model on a site's data), or,
            for an unrolled network, of a trained ``post_unet`` with the same UNet (each
            regulariser starts as that denoiser), or of an unrolled network with fewer
            regularisers or iterations (one shared regulariser -> one per iteration: each
            starts as the shared one; ``K`` -> more iterations: the added iterations start
            as the last one, regulariser and fusion weight); ``None``: random
            initialisation.
    """

    def __init__(
        self,
        network: dict[str, Any],
        loss: str = "l1",
        smooth_l1_beta: float = 1.0,
        ssim_weight: float = 0.0,
        lesion_weight: float = 0.0,
        lesion_dilation: int = 1,
        lesion_mean_weight: float = 0.0,
        lesion_max_weight: float = 0.0,
        nrmse_weight: float = 0.0,
        hot_spot_weight: float = 0.0,
        hot_spot_threshold: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        cosine_steps: int = 0,
        init_weights: str | None = None,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not smooth_l1_beta > 0:
            raise ValueError(f"smooth_l1_beta must be > 0, got {smooth_l1_beta}")
        if ssim_weight < 0:
            raise ValueError(f"ssim_weight must be >= 0, got {ssim_weight}")
        if lesion_weight < 0:
            raise ValueError(f"lesion_weight must be >= 0, got {lesion_weight}")
        if lesion_dilation < 0:
            raise ValueError(f"lesion_dilation must be >= 0 voxels, got {lesion_dilation}")
        if lesion_mean_weight < 0:
            raise ValueError(f"lesion_mean_weight must be >= 0, got {lesion_mean_weight}")
        if lesion_max_weight < 0:
            raise ValueError(f"lesion_max_weight must be >= 0, got {lesion_max_weight}")
        if nrmse_weight < 0:
            raise ValueError(f"nrmse_weight must be >= 0, got {nrmse_weight}")
        if hot_spot_weight < 0:
            raise ValueError(f"hot_spot_weight must be >= 0, got {hot_spot_weight}")
        if not hot_spot_threshold > 0:
            raise ValueError(f"hot_spot_threshold must be > 0, got {hot_spot_threshold}")
        self.save_hyperparameters()
        self.net = build_model(network)
        if init_weights is not None:
            self._load_weights(init_weights)
        self.network_config = dict(network)
        self.geometry_metadata: dict[str, Any] = {}

    def _load_weights(self, path: str) -> None:
        from pet_dl.io.checkpoint import load_checkpoint
        from pet_dl.models import PostUNet, UnrolledEM, build_model

        loaded = load_checkpoint(path, builder=build_model)
        if isinstance(loaded.model, PostUNet) and isinstance(self.net, UnrolledEM):
            # warm start of an unrolled network: every regulariser from the trained
            # post-reconstruction UNet (same input [u, dose], same residual output)
            for reg in self.net.regularisers:
                self._load_state(reg, loaded.model.net.state_dict(), path, loaded.config)
            return
        state = loaded.model.state_dict()
        if isinstance(loaded.model, UnrolledEM) and isinstance(self.net, UnrolledEM):
            # shared -> one regulariser per iteration, K -> more iterations: the new
            # regularisers and fusion weights start as the last trained ones
            state = _extend_unrolled(state, len(self.net.regularisers), self.net.num_iterations)
        self._load_state(self.net, state, path, loaded.config)

    @staticmethod
    def _load_state(module: torch.nn.Module, state: dict[str, Any], path: str, config: dict[str, Any]) -> None:
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            from pet_dl.io.checkpoint import CheckpointError

            first = str(err).strip().splitlines()[0]
            raise CheckpointError(
                f"init_weights {path}: its network ({config.get('name')}) does not "
                f"match model.network: {first}"
            ) from None

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Reconstruct a collated batch: ``(B, nx, ny, nz)`` Bq/mL."""
        return self.net(to_recon_batch(batch))

    @staticmethod
    def _normalise(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = target.flatten(1).mean(1).clamp_min(1e-12).view(-1, *([1] * (target.dim() - 1)))
        return pred / scale, target / scale

    def _ssim(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from monai.losses import SSIMLoss

        dims = self.net.spatial_dims
        p = pred[:, None, ..., 0] if dims == 2 else pred[:, None]
        t = target[:, None, ..., 0] if dims == 2 else target[:, None]
        data_range = t.amax().clamp_min(1e-6)
        return SSIMLoss(spatial_dims=dims, data_range=data_range)(p, t)

    def compute_loss(
        self, pred: torch.Tensor, target: torch.Tensor, lesion_mask: torch.Tensor | None = None,
        geometry: BatchGeometry | None = None,
    ) -> torch.Tensor:
        """Loss between prediction and target ``(B, nx, ny, nz)`` Bq/mL (normalised per scan).

        ``lesion_mask`` ``(B, nx, ny, nz)`` int (0 = background) is required when
        ``lesion_weight``, ``lesion_mean_weight``, ``lesion_max_weight`` or
        ``hot_spot_weight`` is > 0; ``geometry`` (the batch's image grid and PSF) when
        ``hot_spot_weight`` is.
        """
        p, t = self._normalise(pred.float(), target.float())
        hp = self.hparams
        hot_spot_weight = hp.hot_spot_weight
        lesion_terms = (hp.lesion_weight > 0 or hp.lesion_mean_weight > 0 or hp.lesion_max_weight > 0
                        or hot_spot_weight > 0)
        if lesion_terms and lesion_mask is None:
            raise ValueError("lesion_weight / lesion_mean_weight / lesion_max_weight / hot_spot_weight > 0 "
                             "need batches with a 'lesion_mask'")
        mask = lesion_mask.to(p.device) if lesion_terms else None
        weights = None
        if hp.lesion_weight > 0:
            weights = lesion_weights(mask, hp.lesion_weight, hp.lesion_dilation, self.net.spatial_dims)
        loss = weighted_error(p, t, weights, hp.loss, hp.smooth_l1_beta)
        if hp.lesion_mean_weight > 0:
            loss = loss + hp.lesion_mean_weight * lesion_mean_error(p, t, mask)
        if hp.lesion_max_weight > 0:
            loss = loss + hp.lesion_max_weight * lesion_max_error(p, t, mask)
        if hp.nrmse_weight > 0:
            loss = loss + hp.nrmse_weight * nrmse_error(p, t)
        if hp.ssim_weight > 0:
            loss = loss + hp.ssim_weight * self._ssim(p, t)
        if hot_spot_weight > 0:
            if geometry is None:
                raise ValueError("hot_spot_weight > 0 needs the batch's geometry (image grid and PSF)")
            loss = loss + hot_spot_weight * self._hot_spots(p, t, mask, geometry)
        return loss

    def _hot_spots(
        self, p: torch.Tensor, t: torch.Tensor, lesion_mask: torch.Tensor, geometry: BatchGeometry
    ) -> torch.Tensor:
        from pet_dl.forward_model import GaussianResolution

        with torch.no_grad():
            blurred = GaussianResolution(geometry.image, geometry.psf_fwhm_mm).to(t.device)(t)
            exclude = dilate_mask(lesion_mask, HOT_SPOT_LESION_DILATION, self.net.spatial_dims)
        voxel = tuple(float(v) for v in geometry.image.voxel_size_mm)
        return hot_spot_error(p, blurred, exclude, voxel, self.hparams.hot_spot_threshold)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        pred = self(batch)
        loss = self.compute_loss(pred, batch["target"], batch.get("lesion_mask"), batch.get("geometry"))
        self.log("train/loss", loss, prog_bar=True, batch_size=pred.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        from pet_dl import metrics

        pred = self(batch)
        target = batch["target"].float()
        b = pred.shape[0]
        mask = batch.get("lesion_mask")
        loss = self.compute_loss(pred, target, mask, batch.get("geometry"))
        self.log("val/loss", loss, prog_bar=True, batch_size=b, sync_dist=True)
        nrmse = metrics.nrmse(pred.detach(), target).mean().float()
        psnr = metrics.psnr(pred.detach(), target).mean().float()
        self.log("val/nrmse", nrmse, prog_bar=True, batch_size=b, sync_dist=True)
        self.log("val/psnr", psnr, batch_size=b, sync_dist=True)
        bias = None if mask is None else _lesion_mean_bias(pred.detach(), target, mask)
        if bias is not None:
            self.log("val/lesion_bias", bias, batch_size=b, sync_dist=True)
        if "initial" in batch:
            init = batch["initial"].float()
            base = metrics.nrmse(init, target).mean().float()
            self.log("val/nrmse_initial", base, batch_size=b, sync_dist=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        if self.hparams.cosine_steps <= 0:
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.hparams.cosine_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "metadata"):
            self.geometry_metadata = dm.metadata()
            for key, default in (("init_iterations", 10), ("init_subsets", 1)):
                expected = self.geometry_metadata.get(key)
                actual = self.network_config.get(key, default)
                if expected is not None and expected != actual:
                    raise ValueError(
                        f"network {key}={actual} but the data's initial images use "
                        f"{expected}: set model.network.{key} to {expected}"
                    )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pet_dl_metadata"] = self.geometry_metadata

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.geometry_metadata = checkpoint.get("pet_dl_metadata", {})


def _lesion_mean_bias(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor | None:
    """Relative bias of the activity summed over a batch's lesion voxels (None: no lesion)."""
    m = (mask > 0).to(pred.dtype)
    total = (target * m).sum()
    if total <= 0:
        return None
    return ((pred * m).sum() / total - 1.0).float()


def _extend_unrolled(
    state: dict[str, torch.Tensor], regularisers: int, iterations: int
) -> dict[str, torch.Tensor]:
    """An UnrolledEM state dict grown to ``regularisers`` CNNs and ``iterations`` fusion weights.

    CNN ``k`` is the source's CNN ``min(k, n - 1)`` (``n`` source CNNs) and fusion weight
    ``k`` the source's ``min(k, K - 1)``: one shared CNN becomes one per iteration, and
    added iterations repeat the last one. A source of the same size is returned as it is,
    one with more of either too (loading it then fails with the size mismatch).
    """
    n = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("regularisers."))
    k_src = state["fusion_weight"].numel()
    if n > regularisers or k_src > iterations or (n, k_src) == (regularisers, iterations):
        return state
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("regularisers."):
            index, rest = key[len("regularisers."):].split(".", 1)
            for k in range(regularisers):
                if min(k, n - 1) == int(index):
                    out[f"regularisers.{k}.{rest}"] = value.clone()
        elif key in ("fusion_weight", "fusion_dose_slope"):
            out[key] = torch.cat([value, value[-1:].expand(iterations - k_src)])
        else:
            out[key] = value
    return out
