"""The web page at ``/``: a static shell and plain JavaScript modules that use the public
JSON API with the visitor's key, as any other client does (`bananastand.web.page`)."""
