import pytest
import torch

from analysis.deploy import export_run, onnx_latency, structure_network
from conftest import BASELINE_RUN
from models import cost_model, create_model, gated_convs, load_run, prunable_convs
from models.export import ExportError, export_onnx


def test_a_file_that_fails_the_check_is_not_written_and_the_old_one_stays(tmp_path):
    out = tmp_path / "baseline.onnx"
    out.write_bytes(b"the previous export")
    with pytest.raises(ExportError, match=r"not written: onnxruntime's logits NOT equal to PyTorch's within 0 on 50"):
        export_run(BASELINE_RUN, out, limit=50, atol=0.0)  # float32 kernels differ in the last bits
    assert out.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["baseline.onnx"]  # no temporary file left


def test_onnx_latency_is_a_median_per_batch_size_alternating_with_a_reference():
    shape = (1, 28, 28)
    data = export_onnx(create_model("small_cnn", gated=False, num_classes=10, widths=[8, 16, 32, 32, 64]), shape)
    reference = export_onnx(create_model("small_cnn", gated=False, num_classes=10), shape)
    alone = onnx_latency(data, shape)
    assert [(r["batch_size"], r["calls"]) for r in alone["rows"]] == [(1, 20), (64, 20)]
    assert "reference_ms" not in alone["rows"][0] and alone["threads"] == torch.get_num_threads()
    paired = onnx_latency(data, shape, reference=reference)
    for key in ("ms", "reference_ms"):
        assert 0 < paired["rows"][0][key] < paired["rows"][1][key]  # 64 images take longer than one


def test_structure_network_is_the_ungated_structure_and_leaves_the_random_state_alone():
    meta = load_run(BASELINE_RUN).meta
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    thin = structure_network(meta, [8, 16, 16, 32, 64])
    assert torch.equal(torch.rand(3), expected)
    assert [c.conv.out_channels for c in prunable_convs(thin)] == [8, 16, 16, 32, 64] and not gated_convs(thin)
    full = structure_network(meta, None)
    assert cost_model(full, (1, 28, 28)).ungated_macs == cost_model(load_run(BASELINE_RUN).model, (1, 28, 28)).ungated_macs
    again = structure_network(meta, [8, 16, 16, 32, 64])
    assert all(torch.equal(a, b) for a, b in zip(thin.state_dict().values(), again.state_dict().values()))
