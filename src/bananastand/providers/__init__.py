"""Image-generation providers, each behind the small interface of ``providers.base``."""
