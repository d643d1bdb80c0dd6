"""The mixture model: :class:`StepwiseGMM`, an online full-covariance Gaussian mixture (pure numpy).

The river adapter lives in :mod:`streamdetect.model.river_adapter` (``RiverGMM``); it is not
imported here so that using the model does not import river.

>>> from streamdetect.model import StepwiseGMM
>>> StepwiseGMM(n_components=2).is_fitted
False
"""

from streamdetect.model._stepwise import Explanation, NotFittedError, StepwiseGMM

__all__ = ["Explanation", "NotFittedError", "StepwiseGMM"]
