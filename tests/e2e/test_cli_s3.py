"""`bneck extract` from an S3 bucket, as a user with s3fs would run it: against a local S3-compatible server.

moto's server speaks the S3 REST protocol over HTTP on 127.0.0.1 (listings, ranged GETs, ETags), so this
goes through s3fs and botocore exactly as a real bucket does; nothing leaves the machine. Both are test
extras (`moto[server]`, `s3fs`); without them the tests skip, saying so.
"""

import json
import os
import socket
import subprocess
import sys

import h5py
import pytest

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from pipeline.cli.main import main  # noqa: E402
from tests.datafiles import png_bytes, write_shards  # noqa: E402

FAST = ["--backbone", "mobilenet", "--input-size", "32", "--weights", "none", "--seed", "2", "--precision", "fp32",
        "--store-dtype", "float32", "--batch-size", "2", "--chunk-rows", "2", "--no-progress", "--json"]
# What a user exports to point s3fs (and the AWS SDK under it) at an S3-compatible endpoint.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(endpoint, monkeypatch, tmp_path):
    import fsspec.config

    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    # In this process fsspec has read its environment already: set the endpoint as FSSPEC_S3_ENDPOINT_URL would.
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    s3 = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    name = f"bneck-{os.getpid()}-{tmp_path.name}".lower().replace("_", "-")[:60]
    s3.mkdir(name)
    yield s3, name
    s3.rm(name, recursive=True)


def _extract(capsys, data, out, *extra):
    capsys.readouterr()
    rc = main(["extract", data, "-o", str(out), *FAST, *extra])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")][-1]


@pytest.mark.slow  # four extracts
def test_class_folders_and_a_csv_with_an_image_root_from_s3(bucket, tmp_path, capsys, caplog):
    s3, name = bucket
    for cls in ("cat", "dog"):
        for k in range(2):
            s3.pipe(f"{name}/photos/{cls}/{k}.png", png_bytes(10 * len(cls) + k))
    s3.pipe(f"{name}/photos/.DS_Store", b"not an image")
    s3.pipe(f"{name}/list.csv", b"path,label\ncat/0.png,cat\ndog/1.png,dog\ngone.png,dog\n")

    out = _extract(capsys, f"s3://{name}/photos", tmp_path / "folders.h5")
    assert out["rows"] == 4 and out["bad_reasons"] == {}
    with h5py.File(tmp_path / "folders.h5") as h5:
        assert [p.decode() for p in h5["paths"][:]] == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
        assert h5.attrs["source_kind"] == "folder" and h5["valid"][:].all()

    out = _extract(capsys, f"s3://{name}/list.csv", tmp_path / "csv.h5", "--image-root", f"s3://{name}/photos",
                   "--max-bad-fraction", "0.5")
    assert out["rows"] == 3 and out["bad_reasons"] == {"missing": 1}

    # The fingerprint follows the objects' ETags: the same bytes again agree, other bytes do not, and a
    # rerun over changed objects is refused rather than mixed into the old rows.
    s3.pipe(f"{name}/photos/cat/0.png", png_bytes(10 * 3))
    assert _extract(capsys, f"s3://{name}/photos", tmp_path / "folders.h5")["rows"] == 4  # finished: nothing to do
    s3.pipe(f"{name}/photos/cat/0.png", png_bytes(999))
    capsys.readouterr()
    caplog.clear()
    assert main(["extract", f"s3://{name}/photos", "-o", str(tmp_path / "folders.h5"), *FAST]) != 0
    # Read from the log records: moto's server configures logging first, so the root handler that would
    # print them is not the one capsys replaced.
    assert "source: the files changed" in caplog.text and "--overwrite" in caplog.text


@pytest.mark.slow  # the same tars from a local folder stay in the default suite (tests/e2e/test_cli_datasets.py)
def test_webdataset_shards_from_s3_by_brace_pattern(bucket, tmp_path, capsys):
    s3, name = bucket
    for path in write_shards(tmp_path / "shards", n_shards=2, per_shard=3):
        s3.put(path, f"{name}/shards/{os.path.basename(path)}")
    remote = _extract(capsys, f"s3://{name}/shards/{{00000..00001}}.tar", tmp_path / "remote.h5")
    local = _extract(capsys, str(tmp_path / "shards"), tmp_path / "local.h5")
    assert remote["rows"] == local["rows"] == 6
    with h5py.File(tmp_path / "remote.h5") as r, h5py.File(tmp_path / "local.h5") as loc:
        assert r["paths"][:].tolist() == loc["paths"][:].tolist()
        assert r["labels"][:].tolist() == loc["labels"][:].tolist()
        # One ranged GET per member gives the very bytes the local file holds: the same features.
        assert abs(r["features"][:] - loc["features"][:]).max() == 0


@pytest.mark.slow  # a fresh `python -m pipeline` (TensorFlow's import) per command
def test_a_user_points_s3fs_at_the_endpoint_with_environment_variables(bucket, endpoint, tmp_path):
    s3, name = bucket
    for k in range(3):
        s3.pipe(f"{name}/unlabelled/{k}.png", png_bytes(k))
    env = dict(os.environ, **CREDENTIALS, FSSPEC_S3_ENDPOINT_URL=endpoint, TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp_path / "u.h5"
    r = subprocess.run([sys.executable, "-m", "pipeline", "extract", f"s3://{name}/unlabelled", "-o", str(out),
                        *FAST], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "pipeline", "info", str(out), "--json"], env=env, capture_output=True,
                       text=True, cwd=tmp_path)
    info = json.loads(r.stdout)
    assert info["task"] == "none" and info["attrs"]["n_rows"] == 3
