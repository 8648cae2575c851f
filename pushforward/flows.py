"""Presets: small functions that assemble a ``Flow``, registered by name for the CLI.

Every preset is ``Preset(features, context=0, **options) -> Flow`` (image presets take
``shape=(C, H, W)``). ``build("maf", features=2)`` builds one from its name; the flow keeps
``{"flow": name, "options": ...}`` in ``flow.config`` so a checkpoint can rebuild it;
``accepts(name)`` says what it takes (vectors, images, sphere, simplex, integers, context).
Each family's presets live in ``pushforward/presets/<family>.py``; one import line per family
below makes them public and registered.
"""

from pushforward._registry import CAPABILITIES, accepts, build, config_of, names, preset, register
from pushforward.presets.autoregressive import IAF, MAF, NAF, NSF
from pushforward.presets.continuous import CNF
from pushforward.presets.coupling import NICE, Glow, RealNVP
from pushforward.presets.idf import IDF
from pushforward.presets.manifolds import SphericalFlow
from pushforward.presets.residual import Planar, Radial, ResidualFlow, Sylvester
from pushforward.presets.sphere_cnf import SphereCNF
from pushforward.presets.vocoder import Vocoder
from pushforward.video.flow import VideoGlow

__all__ = ["build", "config_of", "names", "register", "accepts", "preset", "CAPABILITIES",
           "MAF", "IAF", "NSF", "Planar", "Radial", "NICE", "RealNVP", "Glow",
           "IDF", "Sylvester", "ResidualFlow", "NAF", "SphericalFlow", "CNF", "SphereCNF",
           "Vocoder", "VideoGlow"]
