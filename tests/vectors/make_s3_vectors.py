#!/usr/bin/env python3
"""Generates s3_presign.json: presigned PUT URLs made by botocore itself.

lib/src/presign/s3.rs checks that `presign_sized_put` (and, until the route
stops calling it, the unsized `presign_put`) produces exactly these URLs,
signature included, so the Rust tests need no Python. Regenerate with

    python3 -m venv /tmp/boto && /tmp/boto/bin/pip install 'boto3==1.44.5' 'botocore==1.44.5'
    /tmp/boto/bin/python tests/vectors/make_s3_vectors.py > tests/vectors/s3_presign.json

Each case goes through the public boto3 API, `generate_presigned_url("put_object",
Params={Bucket, Key, ContentType, ContentLength}, ExpiresIn=...)`, with the
clock frozen by patching `botocore.auth.get_current_datetime` (what SigV4 query
signing reads): `sized_url` signs `content-length` too, so the upload must be
exactly `content_length` bytes; `url` leaves ContentLength out.
`endpoint: null` means no endpoint_url, so botocore picks AWS's own endpoint;
`us_east_1_regional_endpoint = regional` makes that `s3.<region>.amazonaws.com`
for us-east-1 too, which is the default tollgate uses.
"""

import datetime
import json
import sys
from unittest import mock

import boto3
import botocore
from botocore.config import Config

# Example credentials from the AWS SigV4 documentation: not real.
ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
R2_ENDPOINT = "https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com"

CASES = [
    {
        "name": "aws us-east-1, virtual-hosted, default endpoint",
        "region": "us-east-1",
        "endpoint": None,
        "bucket": "tollgate-uploads",
        "force_path_style": False,
        "key": "k_01HXAMPLE/2024/05/0b9e3c5e-7d4f-4f8e-9a51-3c1a2b4d5e6f-photo.png",
        "content_type": "image/png",
        "content_length": 52000,
        "expires_in": 900,
        "now": "2024-05-17T12:34:56Z",
    },
    {
        "name": "aws eu-central-1, path-style, default endpoint",
        "region": "eu-central-1",
        "endpoint": None,
        "bucket": "tollgate-uploads-eu",
        "force_path_style": True,
        "key": "k_01HXAMPLE/2024/05/1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f-report.pdf",
        "content_type": "application/pdf",
        "content_length": 1,
        "expires_in": 3600,
        "now": "2024-12-31T23:59:59Z",
    },
    {
        "name": "cloudflare r2, region auto, path-style",
        "region": "auto",
        "endpoint": R2_ENDPOINT,
        "bucket": "tollgate",
        "force_path_style": True,
        "key": "k_01HXAMPLE/2025/01/2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a-data.csv",
        "content_type": "text/csv",
        "content_length": 4096,
        "expires_in": 900,
        "now": "2025-01-01T00:00:00Z",
    },
    {
        "name": "minio on localhost, path-style, port in the host",
        "region": "us-east-1",
        "endpoint": "http://127.0.0.1:9000",
        "bucket": "tollgate",
        "force_path_style": True,
        "key": "k_local/2024/05/3e4f5a6b-7c8d-4e9f-8a1b-2c3d4e5f6a7b-notes.txt",
        "content_type": "text/plain; charset=utf-8",
        "content_length": 17,
        "expires_in": 900,
        "now": "2024-05-17T12:34:56Z",
    },
    {
        "name": "unicode, spaces, plus and parentheses in the key (r2)",
        "region": "auto",
        "endpoint": R2_ENDPOINT,
        "bucket": "tollgate",
        "force_path_style": True,
        "key": "k_01HXAMPLE/2024/05/4f5a6b7c-8d9e-4f0a-9b1c-2d3e4f5a6b7c-Résumé final (v2) + notes 日本語 🎉.pdf",
        "content_type": "application/pdf",
        "content_length": 123456789,
        "expires_in": 900,
        "now": "2024-05-17T12:34:56Z",
    },
    {
        "name": "unicode, spaces, plus and parentheses in the key (aws virtual-hosted)",
        "region": "us-east-1",
        "endpoint": None,
        "bucket": "tollgate-uploads",
        "force_path_style": False,
        "key": "k_01HXAMPLE/2024/05/5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d-Ünïcode name + (copy).png",
        "content_type": "image/png",
        "content_length": 2048,
        "expires_in": 900,
        "now": "2024-05-17T12:34:56Z",
    },
    {
        "name": "reserved characters in the key",
        "region": "eu-central-1",
        "endpoint": None,
        "bucket": "tollgate-uploads-eu",
        "force_path_style": True,
        "key": "k_01HXAMPLE/2024/05/6b7c8d9e-a!b*c'd=e&f;g,h@i$j:k~l%m#n?o[p]q{r}s^t`u|v.bin",
        "content_type": "application/octet-stream",
        "content_length": 5368709120,
        "expires_in": 900,
        "now": "2024-05-17T12:34:56Z",
    },
    {
        "name": "expiry 1 s (the minimum)",
        "region": "us-east-1",
        "endpoint": None,
        "bucket": "tollgate-uploads",
        "force_path_style": False,
        "key": "k_01HXAMPLE/2024/05/7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f-a.gif",
        "content_type": "image/gif",
        "content_length": 1,
        "expires_in": 1,
        "now": "2024-02-29T08:00:01Z",
    },
    {
        "name": "expiry 604800 s (7 days, the maximum)",
        "region": "auto",
        "endpoint": R2_ENDPOINT,
        "bucket": "tollgate",
        "force_path_style": True,
        "key": "k_01HXAMPLE/2024/05/8d9e0f1a-2b3c-4d4e-9f5a-6b7c8d9e0f1a-video.mp4",
        "content_type": "video/mp4",
        "content_length": 104857600,
        "expires_in": 604800,
        "now": "2024-05-17T12:34:56Z",
    },
    {
        "name": "custom https endpoint with a port, virtual-hosted",
        "region": "us-west-2",
        "endpoint": "https://storage.example.com:8443",
        "bucket": "tollgate",
        "force_path_style": False,
        "key": "k_01HXAMPLE/2024/05/9e0f1a2b-3c4d-4e5f-8a6b-7c8d9e0f1a2b-image.webp",
        "content_type": "image/webp",
        "content_length": 777,
        "expires_in": 900,
        "now": "2024-05-17T12:34:56Z",
    },
    {
        "name": "aws china, default endpoint under amazonaws.com.cn",
        "region": "cn-north-1",
        "endpoint": None,
        "bucket": "tollgate-cn",
        "force_path_style": False,
        "key": "k_01HXAMPLE/2024/05/0f1a2b3c-4d5e-4f6a-8b7c-8d9e0f1a2b3c-doc.json",
        "content_type": "application/json",
        "content_length": 31337,
        "expires_in": 900,
        "now": "2024-05-17T12:34:56Z",
    },
]


def presign(case, sized):
    now = datetime.datetime.strptime(case["now"], "%Y-%m-%dT%H:%M:%SZ")
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name=case["region"],
    )
    config = Config(
        signature_version="s3v4",
        s3={
            "addressing_style": "path" if case["force_path_style"] else "virtual",
            "us_east_1_regional_endpoint": "regional",
        },
    )
    client = session.client("s3", endpoint_url=case["endpoint"], config=config)
    with mock.patch("botocore.auth.get_current_datetime", return_value=now):
        params = {
            "Bucket": case["bucket"],
            "Key": case["key"],
            "ContentType": case["content_type"],
        }
        if sized:
            params["ContentLength"] = case["content_length"]
        return client.generate_presigned_url(
            "put_object", Params=params, ExpiresIn=case["expires_in"]
        )


def main():
    vectors = {
        "generator": "tests/vectors/make_s3_vectors.py",
        "boto3_version": boto3.__version__,
        "botocore_version": botocore.__version__,
        "access_key_id": ACCESS_KEY_ID,
        "secret_access_key": SECRET_ACCESS_KEY,
        "cases": [
            dict(case, url=presign(case, False), sized_url=presign(case, True))
            for case in CASES
        ],
    }
    json.dump(vectors, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
