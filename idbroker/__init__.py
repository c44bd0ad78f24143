"""idbroker: the identity broker for the Wvggz / WGS information chain."""

__version__ = "0.1.0"
