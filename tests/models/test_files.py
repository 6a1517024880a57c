import json
import math

import pytest

from models.files import atomic_write_json


def _strict(text: str):
    """Parse as a strict JSON parser does: NaN, Infinity and -Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"not standard JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_json_files_are_written_as_standard_json_or_refused_naming_the_entry(tmp_path):
    atomic_write_json(tmp_path / "ok.json", {"threshold": None, "ratio": 0.5})
    assert _strict((tmp_path / "ok.json").read_text()) == {"threshold": None, "ratio": 0.5}
    with pytest.raises(ValueError, match=r"bad\.json: not standard JSON: metrics\.macs\[1\] is -inf"):
        atomic_write_json(tmp_path / "bad.json", {"metrics": {"macs": [1.0, -math.inf]}})
    assert not (tmp_path / "bad.json").exists() and not list(tmp_path.glob(".*.tmp"))
