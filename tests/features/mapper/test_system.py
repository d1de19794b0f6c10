"""features.mapper.system: what `bneck info --system` reports, JSON-ready and consistent with the auto choices."""

import json

from features.mapper import device, runtimes
from features.mapper.system import format_system_info, system_info


def test_system_info_is_json_and_matches_the_auto_choices():
    info = system_info()
    assert json.loads(json.dumps(info)) == info
    assert info["tensorflow"] and info["cores"] >= 1 and isinstance(info["gpus"], list)
    auto = info["auto"]
    assert auto["runtime"] == runtimes.resolve_runtime("auto")
    assert auto["precision"] == device.resolve_precision("auto")
    assert auto["xla"] is runtimes.resolve_xla("auto", auto["runtime"])
    assert info["cpu_bf16"] is device.cpu_has_bf16()
    text = format_system_info(info)
    assert f"TensorFlow {info['tensorflow']}" in text and f"--precision {auto['precision']}" in text
    assert ("GPUs: none" in text) == (not info["gpus"])
