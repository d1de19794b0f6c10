"""Keras heads are read only from checked ``.keras`` archives with ``safe_mode=True`` on keras>=3.14.

Each hostile file is built here, put in a real dense model directory with model.json rewritten to match
(the checksums are integrity, not security), and must be refused with a clear error before anything in it
runs. Where Keras itself would also refuse it, that is checked too (defence in depth, not reliance).
"""

import json
import os
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pipeline.heads import DenseHead, SpecialistsHead, UnsafeHeadFile, load_keras_file  # noqa: E402
from pipeline.heads import dense as dense_module  # noqa: E402
from pipeline.modeldir import ModelDirError, load_model_dir, save_model_dir, sha256_file  # noqa: E402


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 2, 2, 4)).astype("float32"), np.arange(40) % 2
    d = tmp_path_factory.mktemp("dense") / "m"
    save_model_dir(d, DenseHead(units=4, epochs=1).fit(X, y), {"head": "dense", "task": "classification"})
    return d


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _put(m, data: bytes, name="head.keras"):
    """Replace a head file with ``data`` and make model.json agree, as an attacker would."""
    (m / name).write_bytes(data)
    doc = json.loads((m / "model.json").read_text())
    doc["files"][name] = sha256_file(m / name)
    (m / "model.json").write_text(json.dumps(doc))


def _rezip(src, members: dict) -> bytes:
    """``src`` (a .keras zip) with ``members`` replaced or added (value None: removed)."""
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(buf, "w") as out:
        for info in z.infolist():
            if info.filename not in members:
                out.writestr(info, z.read(info))
        for name, data in members.items():
            if data is not None:
                out.writestr(name, data)
    return buf.getvalue()


def _config(m):
    with zipfile.ZipFile(m / "head.keras") as z:
        return json.loads(z.read("config.json"))


def _refused(m, match):
    with pytest.raises(ModelDirError, match=match):
        load_model_dir(m)


def test_the_dense_head_loads(dense_dir):
    head, _ = load_model_dir(dense_dir)
    assert isinstance(head, DenseHead)


def test_a_lambda_layer_is_refused_and_never_runs(dense_dir, tmp_path):
    m = _copy(dense_dir, tmp_path / "m")
    marker = tmp_path / "lambda_ran"
    inp = keras.Input((2, 2, 4))
    payload = eval(f"lambda t: __import__('pathlib').Path({str(marker)!r}).touch() or t")  # noqa: S307
    x = keras.layers.Lambda(payload)(keras.layers.Flatten()(inp))
    evil = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x))
    marker.unlink()  # building the model ran the lambda once, here
    evil.save(tmp_path / "evil.keras")
    _put(m, (tmp_path / "evil.keras").read_bytes())
    _refused(m, "Lambda layer, which can run code")
    with pytest.raises(ValueError, match="Lambda"):  # and Keras' safe_mode alone refuses it too
        keras.saving.load_model(m / "head.keras", safe_mode=True, compile=False)
    assert not marker.exists()


def test_a_config_naming_an_arbitrary_module_or_function_is_refused(dense_dir, tmp_path):
    m = _copy(dense_dir, tmp_path / "m")
    config = _config(m)
    layer = next(lay for lay in config["config"]["layers"] if lay["class_name"] == "Dense")
    layer.update(module="os", class_name="system", registered_name=None)
    _put(m, _rezip(m / "head.keras", {"config.json": json.dumps(config)}))
    _refused(m, r"names os\.system, which is not a Keras built-in")
    with pytest.raises(Exception):  # Keras refuses the module too
        keras.saving.load_model(m / "head.keras", safe_mode=True, compile=False)
    # A function smuggled in as an activation ("builtins.exec").
    config = _config(dense_dir)
    layer = next(lay for lay in config["config"]["layers"] if lay["class_name"] == "Dense")
    layer["config"]["activation"] = {"module": "builtins", "class_name": "function", "config": "exec",
                                     "registered_name": "function"}
    _put(m, _rezip(dense_dir / "head.keras", {"config.json": json.dumps(config)}))
    _refused(m, r"names builtins\.function")
    # A custom registered object ("package>Name") from a module that merely looks like Keras.
    config = _config(dense_dir)
    layer = next(lay for lay in config["config"]["layers"] if lay["class_name"] == "Dense")
    layer.update(module="keras.layers", registered_name="evil>Dense")
    _put(m, _rezip(dense_dir / "head.keras", {"config.json": json.dumps(config)}))
    _refused(m, "custom object 'evil>Dense'")


def test_a_tfsm_layer_is_refused(dense_dir, tmp_path):
    m = _copy(dense_dir, tmp_path / "m")
    config = _config(m)
    layers = config["config"]["layers"]
    flat = next(lay for lay in layers if lay["class_name"] == "Flatten")
    flat.update(class_name="TFSMLayer", module="keras.layers", registered_name=None,
                config={"name": flat["config"]["name"], "filepath": str(tmp_path / "attacker_savedmodel"),
                        "call_endpoint": "serve", "trainable": False, "dtype": "float32"})
    _put(m, _rezip(m / "head.keras", {"config.json": json.dumps(config)}))
    _refused(m, "TFSMLayer layer, which can run code or load files")


def test_a_legacy_h5_head_is_refused(dense_dir, tmp_path):
    m = _copy(dense_dir, tmp_path / "m")
    inp = keras.Input((2, 2, 4))
    legacy = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(inp)))
    legacy.save(tmp_path / "legacy.h5")  # Keras 3 still writes the legacy HDF5 format for .h5
    _put(m, (tmp_path / "legacy.h5").read_bytes())  # renamed head.keras: the content decides, not the name
    _refused(m, r"legacy HDF5 \(\.h5\) Keras model.*CVE-2025-9905")
    _put(m, b"not a zip at all")
    _refused(m, "not a .keras archive")


@pytest.mark.parametrize("member", ["../escaped.txt", "/tmp/abs.txt", "assets/../../escaped.txt",
                                    "C:/windows.txt", "stray.py"])
def test_an_archive_member_outside_the_archive_is_refused(dense_dir, tmp_path, member):
    m = _copy(dense_dir, tmp_path / "m")
    _put(m, _rezip(m / "head.keras", {member: b"payload"}))
    _refused(m, "points outside the archive|unexpected archive member")
    assert not (tmp_path / "escaped.txt").exists() and not (m / "escaped.txt").exists()


def test_a_symlink_member_is_refused(dense_dir, tmp_path):
    m = _copy(dense_dir, tmp_path / "m")
    info = zipfile.ZipInfo("assets/link")
    info.external_attr = (0o120777 << 16)  # S_IFLNK
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(m / "head.keras") as z, zipfile.ZipFile(buf, "w") as out:
        for i in z.infolist():
            out.writestr(i, z.read(i))
        out.writestr(info, "/etc/passwd")
    _put(m, buf.getvalue())
    _refused(m, "is a symbolic link")


def test_an_old_keras_is_refused(dense_dir, monkeypatch):
    monkeypatch.setattr(keras, "version", lambda: "3.13.2")
    with pytest.raises(UnsafeHeadFile, match=r"Keras 3\.13\.2.*safe_mode bypasses"):
        load_keras_file(dense_dir / "head.keras")
    monkeypatch.setattr(keras, "version", lambda: "3.14.0")
    assert dense_module.KERAS_FLOOR == (3, 14)
    load_keras_file(dense_dir / "head.keras")


def test_dense_specialists_save_each_network_and_load_checked(tmp_path):
    """Specialists on dense bases: no pickle either; each group's network is its own checked head.keras."""
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(40, 6)).astype("float32"), rng.normal(size=(40, 4))
    head = SpecialistsHead(base=DenseHead(task="regression", units=4, epochs=1), groups={"a": [0, 1], "b": [2, 3]})
    head.fit(X, Y)
    doc = save_model_dir(tmp_path / "m", head, {"head": "specialists", "task": "regression"})
    assert set(doc["files"]) == {"head.skops", "specialists.json", "specialists/0/head.keras",
                                 "specialists/0/head.json", "specialists/1/head.keras", "specialists/1/head.json"}
    again, _ = load_model_dir(tmp_path / "m")
    np.testing.assert_allclose(again.predict(X), head.predict(X), rtol=1e-6)
    # Every file the head reads must be listed: an unlisted group network is refused, not read.
    doc["files"].pop("specialists/1/head.keras")
    (tmp_path / "m" / "model.json").write_text(json.dumps(doc))
    _refused(tmp_path / "m", r"specialists/1/head\.keras is not listed")


def test_trusted_packages_admit_a_hub_network_and_nothing_else(dense_dir, tmp_path):
    # A fine-tuned KerasHub backbone holds KerasHub layers and bneck's token layer (pipeline/serve/finetuned.py
    # trusts those packages); a head trusts none, and the trust never extends to any other module.
    from features.backbones.hub import NETWORK_PACKAGES
    from pipeline.heads import UnsafeHeadFile
    from pipeline.heads.dense import check_keras_file

    def with_layer(module, registered):
        config = _config(dense_dir)
        layer = next(lay for lay in config["config"]["layers"] if lay["class_name"] == "Dense")
        layer.update(module=module, registered_name=registered)
        path = tmp_path / f"{registered.replace('>', '_')}.keras"
        path.write_bytes(_rezip(dense_dir / "head.keras", {"config.json": json.dumps(config)}))
        return path

    hub = with_layer("keras_hub.src.models.vit.vit_layers", "ViTPatchingAndEmbedding")
    ours = with_layer("features.backbones.tokens", "bneck>PatchGrid")
    for path in (hub, ours):
        check_keras_file(path, NETWORK_PACKAGES)
        with pytest.raises(UnsafeHeadFile, match="not a Keras built-in|custom object"):
            check_keras_file(path)  # a head: built-ins only
    for module, registered, match in (("os", "system", r"names os\."), ("keras_hubx.evil", "Evil", "keras_hubx"),
                                      ("keras.layers", "evil>Dense", "custom object 'evil>Dense'")):
        with pytest.raises(UnsafeHeadFile, match=match):
            check_keras_file(with_layer(module, registered), NETWORK_PACKAGES)
