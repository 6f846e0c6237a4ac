"""The client side of bananastand; importable without the server's dependencies."""

from bananastand.client.webhooks import CallbackVerificationError, verify_callback

__all__ = ["CallbackVerificationError", "verify_callback"]
