"""streamdetect: streaming anomaly detection for real-time sales events."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("streamdetect")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
