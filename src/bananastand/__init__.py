"""bananastand: a self-hostable server for asynchronous image-generation jobs."""

__version__ = "0.1.0"
