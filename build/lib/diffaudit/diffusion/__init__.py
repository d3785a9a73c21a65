"""Score-based diffusion: SDEs, score functions, samplers, the U-Net and the training loss."""

from .samplers import SAMPLERS, sample, time_grid
from .score import ScoreModel, gaussian_score, memoriser_score
from .sde import SDE, SDES, VESDE, VPSDE, SubVPSDE, make_sde, sde_from_dict

__all__ = [
    "SAMPLERS", "SDES", "SDE", "ScoreModel", "SubVPSDE", "VESDE", "VPSDE", "gaussian_score", "make_sde",
    "memoriser_score", "sample", "sde_from_dict", "time_grid",
]
