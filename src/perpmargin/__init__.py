"""perpmargin: an exact margin, liquidation and risk engine for perpetual futures."""

from perpmargin.errors import PerpmarginError

__all__ = ["PerpmarginError", "__version__"]

__version__ = "0.1.0"
