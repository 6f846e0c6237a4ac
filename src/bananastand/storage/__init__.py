"""Where result and upload files live, behind the small interface of ``storage.base``."""
