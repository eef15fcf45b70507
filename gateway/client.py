"""Public import path of the control-plane client: ``from brug.gateway.client import
GatewayClient`` (implemented in :mod:`brug.gateway.control.client`)."""

from brug.gateway.control.client import GatewayClient, GatewayError, GatewayTimeout

__all__ = ["GatewayClient", "GatewayError", "GatewayTimeout"]
