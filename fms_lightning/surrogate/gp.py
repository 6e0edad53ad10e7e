"""The deep-kernel GP surrogate (eqs. 2, 3 and 7) and its training schedule.

Glossary:
    ψ           the feature extractor (``features.FeatureExtractor``), or the identity
                for the plain ``"gp"`` method.
    k           ``ScaleKernel(RBF | Matérn-5/2)`` on ψ(row); eq. 2 / eq. 7.
    L           the negative log marginal likelihood, eq. 3, minimised with Adam.
    y           labels, standardised to zero mean / unit variance before fitting; the curve
                columns Y_{i,j-1} are standardised with the same statistics.
    ξ(W)        weight-feature columns, standardised per column with training-row statistics
                (encoder outputs have arbitrary scale); or, with a trainable GMN
                (``readout.SnapshotFeaturizer``), a snapshot slot that ψ's ``GraphReadout`` maps
                to ξ, trained jointly with ψ and the kernel on eq. 3.

Numerical trouble: a failed Cholesky (or a non-finite loss) is retried with more
jitter, then from freshly initialised parameters; if all attempts fail,
:class:`~fms_lightning.errors.SurrogateError` is raised for the caller to handle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

import gpytorch
import torch
from torch import nn

from fms_lightning.errors import ConfigurationError, SurrogateError
from fms_lightning.surrogate.dataset import InputLayout
from fms_lightning.surrogate.features import FeatureExtractor
from fms_lightning.surrogate.exact import eq3_loss, exact_settings, posterior
from fms_lightning.surrogate.readout import GraphReadout, SnapshotFeaturizer
from fms_lightning.surrogate.stopping import LossPlateau

__all__ = ["Kernel", "SurrogateConfig", "DeepKernelGP", "Surrogate"]

log = logging.getLogger(__name__)

_JITTERS = (None, 1e-4, 1e-3)


class Kernel(str, Enum):
    RBF = "rbf"
    MATERN = "matern"


@dataclass(frozen=True)
class SurrogateConfig:
    """Settings of the surrogate.

    The paper (A.3/A.6, after DyHPO) fits with Adam at lr 1e-3 for 1000 steps from scratch and
    50 warm-started steps. The defaults here take five times fewer steps at five times the
    learning rate (the same lr x steps, so about as far from the initialisation): five times
    cheaper per suggestion, and level or better on probe runs (the demo, seeds 10-14; the zoo
    and CNN replays, seeds 400-405). The step counts act as the regulariser of the deep kernel;
    fits run to convergence overfit.

    Args:
        kernel: Base kernel inside ``ScaleKernel``.
        lr: Adam learning rate.
        initial_steps: Steps from scratch while the study has ``<= full_fit_until`` evaluations.
        refine_steps: Warm-started steps per refit afterwards.
        full_fit_until: Number of evaluations up to which every fit is from scratch.
        initial_warm_steps: With a number, only the first fit of that initial phase is from
            scratch (``initial_steps``); the later ones warm-start from the previous fit and take
            this many steps. None (DyHPO): every fit of the phase is from scratch.
        max_train_rows: Past this many rows, the exact GP is fit on a seeded subset that
            keeps every trial's latest row (Cholesky is cubic in rows).
        learning_curve: Use the curve CNN.
        use_extractor: False gives the plain GP on ``[x, j]``.
        stop_rel_tol: Stop a fit early once eq. 3 has stopped improving: when, over the last
            ``stop_window`` steps, the best loss improved by at most this share of its scale
            (:class:`~fms_lightning.surrogate.stopping.LossPlateau`); the step counts above stay caps.
            None runs every step.
        stop_window: The plateau test's window (steps).

    Raises:
        ConfigurationError: On a non-positive value or unknown kernel.
    """

    kernel: Kernel = Kernel.MATERN
    lr: float = 5e-3
    initial_steps: int = 200
    refine_steps: int = 10
    full_fit_until: int = 10
    initial_warm_steps: int | None = None
    max_train_rows: int = 1500
    learning_curve: bool = True
    use_extractor: bool = True
    stop_rel_tol: float | None = None
    stop_window: int = 25

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kernel", Kernel(self.kernel))
        except ValueError as err:
            raise ConfigurationError(
                f"SurrogateConfig: kernel={self.kernel!r}; expected one of {[k.value for k in Kernel]}."
            ) from err
        if self.lr <= 0 or self.initial_steps < 0 or self.refine_steps < 0 or self.max_train_rows < 2:
            raise ConfigurationError(
                f"SurrogateConfig received lr={self.lr}, initial_steps={self.initial_steps}, "
                f"refine_steps={self.refine_steps}, max_train_rows={self.max_train_rows}; expected "
                f"lr > 0, steps >= 0, max_train_rows >= 2."
            )
        if self.initial_warm_steps is not None and self.initial_warm_steps < 0:
            raise ConfigurationError(
                f"SurrogateConfig received initial_warm_steps={self.initial_warm_steps}; expected None or >= 0."
            )
        if self.stop_rel_tol is not None:
            LossPlateau(window=self.stop_window, rel_tol=self.stop_rel_tol)  # validates both


class DeepKernelGP(gpytorch.models.ExactGP):
    """``ExactGP`` whose kernel acts on ψ(row) (eq. 7).

    Args:
        train_x: Rows `(n, width)`.
        train_y: Standardised labels `(n,)`.
        likelihood: A ``GaussianLikelihood``.
        extractor: ψ, or None for a plain ARD kernel on the raw rows.
        kernel: The base kernel.
    """

    def __init__(
        self,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        likelihood: gpytorch.likelihoods.GaussianLikelihood,
        extractor: nn.Module | None,
        kernel: Kernel,
        n_dims: int,
    ) -> None:
        super().__init__(train_x, train_y, likelihood)
        self.extractor = extractor
        if kernel is Kernel.RBF:
            base = gpytorch.kernels.RBFKernel(ard_num_dims=n_dims)
        else:
            base = gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=n_dims)
        self.covar_module = gpytorch.kernels.ScaleKernel(base)
        self.mean_module = gpytorch.means.ConstantMean()

    def forward(self, rows: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        z = self.extractor(rows) if self.extractor is not None else rows
        return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))


def weight_scaler(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and scale of weight features `(m, n_weight)`.

    The scale is floored at a tenth of the overall spread, so a column that is (nearly)
    constant on the population does not blow up elsewhere; a constant population gives 1.
    """
    w = w.to(torch.float64)
    mean = w.mean(0)
    overall = float((w - mean).std()) if w.numel() > 1 else 0.0
    floor = 0.1 * overall if overall > 1e-12 else 1.0
    col = w.std(0).nan_to_num(0.0) if w.shape[0] > 1 else torch.zeros_like(mean)
    return mean, col.clamp_min(floor)


class _Retry(Exception):
    pass


class Surrogate:
    """Fits the deep-kernel GP to rows and predicts the latent f at new rows.

    Args:
        layout: Input layout.
        config: Surrogate settings.
        weights: The bank of a trainable GMN (rows carry snapshot slots); None when the rows
            carry frozen embeddings or no weights.
    """

    def __init__(
        self, layout: InputLayout, config: SurrogateConfig | None = None, *, weights: SnapshotFeaturizer | None = None
    ) -> None:
        self.layout = layout
        self.config = config or SurrogateConfig()
        self.weights = weights
        self.trunk_trained = False  # whether the last fit trained the GMN trunk
        self.model: DeepKernelGP | None = None
        self._y_mean = 0.0
        self._y_std = 1.0
        self.last_fit_loss: float | None = None  # negative marginal log likelihood (eq. 3) at the last step
        self.last_fit_steps = 0  # Adam steps the last fit took (fewer than asked when it stopped on a plateau)
        self._w_mean: torch.Tensor | None = None
        self._w_std: torch.Tensor | None = None
        self._train: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- construction ----------------------------------------------------------------
    def _columns(self) -> list[int]:
        lay = self.layout
        return list(range(lay.n_hp + 1))  # plain GP: x and budget

    def _build(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> DeepKernelGP:
        cfg = self.config
        with torch.random.fork_rng(devices=[]):  # no global side effect
            torch.manual_seed(seed)
            extractor = None
            n_dims = len(self._columns())
            if cfg.use_extractor:
                module = self.weights.make_module() if self.weights is not None and self.layout.n_weight else None
                extractor = FeatureExtractor(self.layout, learning_curve=cfg.learning_curve, weight_module=module)
                n_dims = extractor.out_features
            lik = gpytorch.likelihoods.GaussianLikelihood()
            model = DeepKernelGP(x, y, lik, extractor, cfg.kernel, n_dims)
        return model.double()

    @property
    def readout(self) -> GraphReadout | None:
        """ψ's trainable weight module, if any."""
        ext = None if self.model is None else self.model.extractor
        return None if ext is None else ext.weight_module  # type: ignore[return-value]

    def _prep(self, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.to(torch.float64).clone()
        lay = self.layout
        if lay.curve_len:
            mask = rows[:, lay.mask_slice]
            rows[:, lay.curve_slice] = (rows[:, lay.curve_slice] - self._y_mean) / self._y_std * mask
        if lay.n_weight and self._w_mean is not None:
            rows[:, lay.weight_slice] = (rows[:, lay.weight_slice] - self._w_mean) / self._w_std
        if not self.config.use_extractor:
            rows = rows[:, self._columns()]
        return rows

    # -- fitting ---------------------------------------------------------------------
    def fit(
        self,
        rows: torch.Tensor,
        targets: torch.Tensor,
        *,
        steps: int,
        from_scratch: bool,
        seed: int,
        weight_population: torch.Tensor | None = None,
    ) -> int:
        """Set the training data and run ``steps`` Adam steps on eq. 3.

        Args:
            rows: Training rows `(n, width)`.
            targets: Labels `(n,)` (internal units, larger is better).
            steps: Number of full-batch Adam steps (0 only conditions on the data).
            from_scratch: Reinitialise ψ and kernel parameters first (seeded by ``seed``).
            seed: Seed for (re)initialisation.
            weight_population: Weight features `(m, n_weight)` that fix their standardisation
                (e.g. every known snapshot and hub checkpoint); default: the training rows.

        Returns:
            The number of attempts needed (1 when no numerical trouble occurred).

        Raises:
            SurrogateError: If every retry failed.
        """
        if rows.shape[0] == 0:
            raise SurrogateError("Surrogate.fit received no rows; observe at least one value first.")
        y = targets.to(torch.float64)
        self._y_mean = float(y.mean())
        self._y_std = float(y.std()) if y.numel() > 1 and float(y.std()) > 1e-12 else 1.0
        if self.layout.n_weight and self.weights is None:
            self._w_mean, self._w_std = weight_scaler(
                rows[:, self.layout.weight_slice] if weight_population is None else weight_population
            )
        x = self._prep(rows)
        yn = (y - self._y_mean) / self._y_std
        self._train = (x, yn)
        scratch = from_scratch or self.model is None
        state = None if scratch else self.model.state_dict()
        train_trunk = False
        if self.weights is not None and self.layout.n_weight and scratch and steps > 0:
            n_graphs = int(torch.unique(rows[:, self.layout.weight_slice]).numel())
            train_trunk = self.weights.trains_trunk(n_graphs)
        for attempt, jitter in enumerate(_JITTERS):
            if state is None or attempt == len(_JITTERS) - 1:
                self.model = self._build(x, yn, seed + attempt)
            else:
                self.model.load_state_dict(state)
                self.model.set_train_data(x, yn, strict=False)
            readout = self.readout
            try:
                if readout is not None:
                    readout.prepare(train_trunk=train_trunk)
                self._optimise(x, yn, steps, jitter)
                if readout is not None:  # later forwards read node states of the (trained) trunk
                    readout.prepare(train_trunk=False)
                self.trunk_trained = train_trunk
                return attempt + 1
            except _Retry as err:
                log.debug("surrogate fit attempt %d failed: %s", attempt + 1, err)
        self.model = None
        raise SurrogateError(
            f"The GP could not be fit to {x.shape[0]} rows after {len(_JITTERS)} attempts (jitter "
            f"and a fresh restart). Check for duplicated or non-finite observations."
        )

    def _optimise(self, x: torch.Tensor, y: torch.Tensor, steps: int, jitter: float | None) -> None:
        model = self.model
        if model is None:  # pragma: no cover - fit() always builds one first
            raise SurrogateError("Surrogate._optimise called without a model.")
        if steps == 0:
            return
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=self.config.lr, foreach=True)
        loss_fn = eq3_loss(model)
        cfg = self.config
        plateau = None if cfg.stop_rel_tol is None else LossPlateau(cfg.stop_window, cfg.stop_rel_tol)
        self.last_fit_steps = 0
        with exact_settings(jitter):
            for _ in range(steps):
                opt.zero_grad()
                try:
                    loss = loss_fn(x, y)
                    if not torch.isfinite(loss):
                        raise _Retry("non-finite loss")
                    loss.backward()
                except (RuntimeError, ValueError) as err:  # NotPSDMatrixError is a RuntimeError
                    raise _Retry(str(err)) from err
                opt.step()
                self.last_fit_loss = float(loss.detach())
                self.last_fit_steps += 1
                if plateau is not None and plateau.update(self.last_fit_loss):
                    break
        model.eval()

    # -- prediction ------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self, rows: torch.Tensor, *, fantasy_rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and std of the latent f, in label units.

        Pending evaluations are fantasised with the posterior mean (kriging believer):
        ``fantasy_rows`` are added to the conditioning set with their own predicted mean.

        Args:
            rows: Candidate rows `(m, width)`.
            fantasy_rows: Rows `(p, width)` of running evaluations, or None.

        Returns:
            ``(mean, std)``, each `(m,)`.

        Raises:
            SurrogateError: If the model is not fit or the posterior cannot be computed.
        """
        if self.model is None or self._train is None:
            raise SurrogateError("Surrogate.predict called before fit(); call fit() first.")
        model = self.model
        model.eval()
        x_tr, y_tr = self._train
        cand = self._prep(rows)
        if self.readout is not None:
            self.readout.prepare(train_trunk=False)
        for jitter in _JITTERS:
            try:
                with exact_settings(jitter):
                    x_c, y_c = x_tr, y_tr
                    if fantasy_rows is not None and fantasy_rows.shape[0]:
                        fx = self._prep(fantasy_rows)
                        fy, _ = posterior(model, x_tr, y_tr, fx)
                        x_c, y_c = torch.cat([x_tr, fx]), torch.cat([y_tr, fy])
                    mean, var = posterior(model, x_c, y_c, cand)
                    var = var.clamp_min(1e-12)
                model.set_train_data(x_tr, y_tr, strict=False)
                if torch.isfinite(mean).all() and torch.isfinite(var).all():
                    return mean * self._y_std + self._y_mean, var.sqrt() * self._y_std
            except (RuntimeError, ValueError) as err:
                log.debug("surrogate prediction failed: %s", err)
                model.set_train_data(x_tr, y_tr, strict=False)
        raise SurrogateError("The GP posterior could not be computed even with added jitter.")

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Parameters of ψ, the kernel and the likelihood (None before the first fit)."""
        return {"model": None if self.model is None else {k: v.clone() for k, v in self.model.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore parameters saved by :meth:`state_dict` (data are set again at the next fit)."""
        params = state.get("model")
        if params is None:
            self.model = None
            return
        dummy_x = torch.zeros(2, self.layout.width, dtype=torch.float64)
        self.model = self._build(self._prep(dummy_x), torch.zeros(2, dtype=torch.float64), 0)
        self.model.load_state_dict(params)
        if self.readout is not None:
            self.readout.prepare(train_trunk=False)
