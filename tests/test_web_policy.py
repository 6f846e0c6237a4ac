"""Unit: the web page's Content-Security-Policy lets its images come from wherever the links
the server hands out point: the public URL (which may name another origin than the one
the visitor typed) and, with presigned redirects, the bucket's host."""

from __future__ import annotations

from bananastand.settings import Settings
from bananastand.web.page import content_security_policy


def image_sources(settings: Settings) -> list[str]:
    policy = dict(part.split(" ", 1) for part in content_security_policy(settings).split("; "))
    return policy["img-src"].split(" ")


def test_images_may_come_from_the_public_url() -> None:
    settings = Settings(public_url="https://images.example.com/base/")
    assert image_sources(settings) == ["'self'", "data:", "blob:", "https://images.example.com"]


def test_presigned_redirects_add_the_buckets_host() -> None:
    s3 = {"storage_backend": "s3", "s3_bucket": "bucket", "s3_presigned_redirect": True}
    on_minio = Settings(**s3, s3_endpoint_url="http://minio:9000", public_url="https://a.example")
    assert image_sources(on_minio)[-2:] == ["https://a.example", "http://minio:9000"]
    on_aws = Settings(**s3, public_url="https://a.example")
    assert image_sources(on_aws)[-1] == "https://*.amazonaws.com"
    streamed = Settings(**{**s3, "s3_presigned_redirect": False}, public_url="https://a.example")
    assert image_sources(streamed)[-1] == "https://a.example"
