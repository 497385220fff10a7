"""The 3D Gaussian scene representation shared by every stage.

A :class:`Gaussians` holds raw (pre-activation) parameters, exactly as 3DGS stores them:

- ``means`` ``[N, 3]`` world positions,
- ``quats`` ``[N, 4]`` rotations as ``wxyz`` quaternions (not necessarily unit length; renderers
  normalise),
- ``log_scales`` ``[N, 3]`` (``scales = exp(log_scales)``, standard deviations in metres),
- ``opacity_logits`` ``[N]`` (``opacities = sigmoid(opacity_logits)``),
- ``sh`` ``[N, K, 3]`` spherical-harmonics colour coefficients, ``K = (degree + 1) ** 2 <= 16``;
  ``sh[:, 0]`` is the DC term (``rgb = 0.5 + C0 * sh[:, 0]`` when viewed without higher bands),
- ``features`` named per-Gaussian tensors ``[N, D]`` of any width and float dtype (``instance_l``,
  ``language_l`` in fp16, ...).

Interoperation with gsplat's densification (``gsplat.strategy.DefaultStrategy``) goes through
:meth:`Gaussians.params` / :meth:`Gaussians.from_params`: a flat ``dict[str, nn.Parameter]`` with
gsplat's key names (``means``, ``quats``, ``scales``, ``opacities``, ``sh0``, ``shN``) plus one
``feat_<name>`` entry per feature, so features get duplicated, split and pruned with the geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor

from cos3d.core.errors import Cos3dError

FEATURE_PARAM_PREFIX = "feat_"
"""Key prefix of feature entries in :meth:`Gaussians.params` dicts."""

_CORE = ("means", "quats", "log_scales", "opacity_logits", "sh")


@dataclass
class Gaussians:
    """A set of N 3D Gaussians (raw parameters; see the module docstring for the layout)."""

    means: Tensor
    """[N, 3] world positions."""
    quats: Tensor
    """[N, 4] wxyz rotations, not necessarily normalised."""
    log_scales: Tensor
    """[N, 3] log standard deviations along the local axes."""
    opacity_logits: Tensor
    """[N] logits of the opacities."""
    sh: Tensor
    """[N, K, 3] SH coefficients, K = (degree + 1)^2, sh[:, 0] is the DC term."""
    features: dict[str, Tensor] = field(default_factory=dict)
    """Named per-Gaussian tensors [N, D] (any D, any float dtype)."""

    # ----------------------------------------------------------------- derived quantities
    @property
    def num(self) -> int:
        """Number of Gaussians N."""
        return int(self.means.shape[0])

    def __len__(self) -> int:
        return self.num

    @property
    def opacities(self) -> Tensor:
        """[N] opacities in (0, 1)."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def scales(self) -> Tensor:
        """[N, 3] standard deviations (metres)."""
        return torch.exp(self.log_scales)

    @property
    def sh_degree(self) -> int:
        """SH degree of ``sh`` (0..3)."""
        return int(round(math.sqrt(self.sh.shape[1]))) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def rgb(self) -> Tensor:
        """[N, 3] the view-independent (DC) colour in [0, 1] (clamped)."""
        from cos3d.data.sh import SH_C0

        return (0.5 + SH_C0 * self.sh[:, 0]).clamp(0.0, 1.0)

    # ----------------------------------------------------------------- construction helpers
    @classmethod
    def from_points(
        cls,
        points: Tensor,
        colors: Tensor | None = None,
        *,
        scales: Tensor | float = 0.01,
        opacity: float = 0.1,
        sh_degree: int = 3,
    ) -> "Gaussians":
        """Isotropic Gaussians at ``points`` [N, 3] with RGB ``colors`` [N, 3] in [0, 1] (grey if None).

        ``scales`` is a standard deviation per point ([N]) or one value for all.
        """
        from cos3d.data.sh import rgb_to_sh0

        points = torch.as_tensor(points, dtype=torch.float32)
        n = points.shape[0]
        if colors is None:
            colors = torch.full((n, 3), 0.5)
        colors = torch.as_tensor(colors, dtype=torch.float32, device=points.device)
        s = torch.as_tensor(scales, dtype=torch.float32, device=points.device).reshape(-1)
        s = s.expand(n) if s.numel() == 1 else s
        sh = torch.zeros(n, (sh_degree + 1) ** 2, 3, device=points.device)
        sh[:, 0] = rgb_to_sh0(colors)
        quats = torch.zeros(n, 4, device=points.device)
        quats[:, 0] = 1.0
        op = float(min(max(opacity, 1e-6), 1 - 1e-6))
        return cls(
            means=points.clone(),
            quats=quats,
            log_scales=torch.log(s.clamp_min(1e-8))[:, None].repeat(1, 3),
            opacity_logits=torch.full((n,), math.log(op / (1 - op)), device=points.device),
            sh=sh,
        )

    @classmethod
    def random(
        cls,
        n: int,
        *,
        center: tuple[float, float, float] = (0.0, 0.0, 0.0),
        extent: float = 1.0,
        scale: tuple[float, float] = (0.01, 0.05),
        sh_degree: int = 0,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> "Gaussians":
        """N random Gaussians in a cube of half-size ``extent`` around ``center`` (tests, benchmarks)."""
        g = generator
        means = (torch.rand(n, 3, generator=g, dtype=dtype) * 2 - 1) * extent + torch.tensor(center, dtype=dtype)
        lo, hi = math.log(scale[0]), math.log(scale[1])
        log_scales = torch.rand(n, 3, generator=g, dtype=dtype) * (hi - lo) + lo
        quats = torch.randn(n, 4, generator=g, dtype=dtype)
        opacity_logits = torch.randn(n, generator=g, dtype=dtype) * 1.5 + 0.5
        sh = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype) * 0.5
        if sh_degree > 0:
            sh[:, 1:] *= 0.2
        return cls(means, quats, log_scales, opacity_logits, sh)

    # ----------------------------------------------------------------- structural operations
    def _map(self, fn, feature_fn=None) -> "Gaussians":
        feature_fn = feature_fn or fn
        return Gaussians(
            means=fn(self.means),
            quats=fn(self.quats),
            log_scales=fn(self.log_scales),
            opacity_logits=fn(self.opacity_logits),
            sh=fn(self.sh),
            features={k: feature_fn(v) for k, v in self.features.items()},
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Gaussians":
        """Move to ``device``; ``dtype`` (optional) converts the core parameters only (features keep theirs)."""
        return self._map(lambda t: t.to(device=device, dtype=dtype), lambda t: t.to(device=device))

    def detach(self) -> "Gaussians":
        """The same tensors without autograd history."""
        return self._map(lambda t: t.detach())

    def clone(self) -> "Gaussians":
        return self._map(lambda t: t.clone())

    def subset(self, idx: Tensor) -> "Gaussians":
        """The Gaussians selected by ``idx`` (LongTensor of ids or a bool mask [N])."""
        idx = torch.as_tensor(idx, device=self.device)
        if idx.dtype == torch.bool and idx.shape != (self.num,):
            raise Cos3dError(f"subset mask must have shape [{self.num}], got {list(idx.shape)}")
        return self._map(lambda t: t[idx])

    def with_features(self, **features: Tensor) -> "Gaussians":
        """A shallow copy with ``features`` added or replaced."""
        out = Gaussians(self.means, self.quats, self.log_scales, self.opacity_logits, self.sh, dict(self.features))
        out.features.update(features)
        out.validate_shapes()
        return out

    # ----------------------------------------------------------------- validation
    def validate_shapes(self) -> None:
        """Raise :class:`Cos3dError` if a tensor has the wrong shape (cheap; no data is read)."""
        n = self.num
        expect = {"means": (n, 3), "quats": (n, 4), "log_scales": (n, 3), "opacity_logits": (n,)}
        if self.means.ndim != 2 or self.means.shape[1] != 3:
            raise Cos3dError(f"Gaussians.means must have shape [N, 3], got {list(self.means.shape)}")
        for name, shape in expect.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape:
                raise Cos3dError(f"Gaussians.{name} must have shape {list(shape)}, got {list(t.shape)}")
        k = self.sh.shape[1] if self.sh.ndim == 3 else -1
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3 or k not in (1, 4, 9, 16):
            raise Cos3dError(
                f"Gaussians.sh must have shape [N={n}, K, 3] with K in (1, 4, 9, 16) (SH degree <= 3), "
                f"got {list(self.sh.shape)}"
            )
        for name, t in self.features.items():
            if t.ndim != 2 or t.shape[0] != n:
                raise Cos3dError(f"Gaussians.features[{name!r}] must have shape [N={n}, D], got {list(t.shape)}")
        devices = {t.device for t in (self.means, self.quats, self.log_scales, self.opacity_logits, self.sh)}
        if len(devices) != 1:
            raise Cos3dError(f"Gaussians tensors live on different devices: {sorted(map(str, devices))}")

    def nonfinite_rows(self) -> tuple[Tensor, list[str]]:
        """``(bad [N] bool, names)``: the Gaussians with a NaN/inf in any float tensor (core or
        feature), and the names of the tensors that hold them."""
        bad = torch.zeros(self.num, dtype=torch.bool, device=self.means.device)
        names: list[str] = []
        tensors: list[tuple[str, Tensor]] = [(n, getattr(self, n)) for n in _CORE]
        tensors += [(f"features[{k!r}]", v) for k, v in self.features.items()]
        for name, t in tensors:
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
                bad |= (~torch.isfinite(t)).reshape(t.shape[0], -1).any(dim=1).to(bad.device)
                names.append(name)
        return bad, names

    def validate(self, where: str = "Gaussians") -> "Gaussians":
        """Check shapes and that every tensor is finite; raise :class:`Cos3dError` naming ``where``, the
        count of bad Gaussians and the tensors that hold NaN/inf. Non-finite Gaussians are refused,
        never dropped (the same policy as :func:`cos3d.data.ply.read_ply`).

        Returns ``self`` so it can be chained (``read_ply(p).validate()``).
        """
        self.validate_shapes()
        bad, names = self.nonfinite_rows()
        if names:
            nbad = int(bad.sum())
            first = int(bad.nonzero()[0, 0])
            raise Cos3dError(
                f"{where}: {nbad} of {self.num} Gaussians have NaN/inf values (in {', '.join(names)}; first: "
                f"index {first}); the scene diverged or the file is corrupt"
            )
        return self

    # ----------------------------------------------------------------- gsplat interop
    def params(self, *, requires_grad: bool = True) -> dict[str, torch.nn.Parameter]:
        """A flat dict of ``nn.Parameter`` in gsplat's naming, for optimisers and ``DefaultStrategy``.

        Keys: ``means`` [N,3], ``quats`` [N,4], ``scales`` [N,3] (log), ``opacities`` [N] (logits),
        ``sh0`` [N,1,3], ``shN`` [N,K-1,3] (only when degree > 0) and ``feat_<name>`` [N,D] per feature.
        The parameters are fresh leaves (copies); rebuild with :meth:`from_params`.
        """

        def p(t: Tensor) -> torch.nn.Parameter:
            return torch.nn.Parameter(t.detach().clone(), requires_grad=requires_grad)

        out = {
            "means": p(self.means),
            "quats": p(self.quats),
            "scales": p(self.log_scales),
            "opacities": p(self.opacity_logits),
            "sh0": p(self.sh[:, :1]),
        }
        if self.sh.shape[1] > 1:
            out["shN"] = p(self.sh[:, 1:])
        for name, t in self.features.items():
            out[FEATURE_PARAM_PREFIX + name] = p(t)
        return out

    @classmethod
    def from_params(cls, params: Mapping[str, Tensor]) -> "Gaussians":
        """Rebuild from a :meth:`params` dict (tensors are used as they are: keep the graph if any)."""
        missing = [k for k in ("means", "quats", "scales", "opacities", "sh0") if k not in params]
        if missing:
            raise Cos3dError(f"Gaussians.from_params: missing keys {missing}; got {sorted(params)}")
        sh = params["sh0"]
        if "shN" in params and params["shN"].shape[1] > 0:
            sh = torch.cat([sh, params["shN"]], dim=1)
        feats = {k[len(FEATURE_PARAM_PREFIX):]: v for k, v in params.items() if k.startswith(FEATURE_PARAM_PREFIX)}
        return cls(
            means=params["means"],
            quats=params["quats"],
            log_scales=params["scales"],
            opacity_logits=params["opacities"].reshape(-1),
            sh=sh,
            features=feats,
        )

    def __repr__(self) -> str:
        feats = ", ".join(f"{k}: {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in self.features.items())
        return (
            f"Gaussians(num={self.num}, sh_degree={self.sh_degree}, device={self.device}, "
            f"dtype={str(self.dtype).replace('torch.', '')}, features={{{feats}}})"
        )
