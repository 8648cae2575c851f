"""Transforms, one module per family; every public class follows the ``Transform`` contract."""

from pushforward.core import Chain, Inverse, Transform
from pushforward.transforms.autoregressive import InverseAutoregressive, MaskedAutoregressive
from pushforward.transforms.box import bounded, box_bounds
from pushforward.transforms.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    coupling_mask,
)
from pushforward.transforms.elementwise import Affine, Logit, Sigmoid
from pushforward.transforms.images import Flatten, MultiScale, Squeeze
from pushforward.transforms.integer import IntegerCoupling
from pushforward.transforms.linear import (
    InvertibleConv1x1,
    LULinear,
    Permutation,
    RandomPermutation,
    Reverse,
)
from pushforward.transforms.naf import DeepSigmoidalMap, NeuralAutoregressive
from pushforward.transforms.normalization import ActNorm, BatchNorm
from pushforward.transforms.planar import Planar, Radial
from pushforward.transforms.preprocessing import LogitPreprocessing, Reshape, Standardization
from pushforward.transforms.residual import ResidualBlock
from pushforward.transforms.splines import RationalQuadraticMap, rational_quadratic_spline
from pushforward.transforms.sylvester import Sylvester

__all__ = [
    "Transform",
    "Chain",
    "Inverse",
    "Affine",
    "Sigmoid",
    "Logit",
    "ActNorm",
    "Permutation",
    "Reverse",
    "RandomPermutation",
    "LULinear",
    "InvertibleConv1x1",
    "Planar",
    "Radial",
    "Coupling",
    "AdditiveCoupling",
    "AffineCoupling",
    "IntegerCoupling",
    "coupling_mask",
    "Squeeze",
    "Flatten",
    "MultiScale",
    "MaskedAutoregressive",
    "InverseAutoregressive",
    "RationalQuadraticMap",
    "rational_quadratic_spline",
    "Sylvester",
    "ResidualBlock",
    "NeuralAutoregressive",
    "DeepSigmoidalMap",
    "BatchNorm",
    "bounded",
    "box_bounds",
    "Standardization",
    "LogitPreprocessing",
    "Reshape",
]
