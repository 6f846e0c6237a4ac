"""Where result and upload files live, behind the small interface of ``storage.base``."""

from __future__ import annotations

from bananastand.errors import ConfigurationError
from bananastand.settings import Settings
from bananastand.storage.base import Storage


def open_storage(settings: Settings) -> Storage:
    """The backend the settings name: local disk (default) or an S3-compatible bucket."""
    if settings.storage_backend == "s3":
        if not settings.s3_bucket:
            raise ConfigurationError("BANANASTAND_S3_BUCKET is required with the s3 backend")
        from bananastand.storage.s3 import S3Storage  # boto3 is slow to import: only if used

        return S3Storage(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
        )
    from bananastand.storage.local import LocalStorage

    return LocalStorage(settings.files_dir)
