import json

import pytest
import torch

from analysis import TrainConfig, TrainError, train
from models import load_run

QUICK = TrainConfig(pretrain_epochs=1, finetune_epochs=2, noise_free_epochs=1, num_actions=4,
                    gate_lr=0.1, lam=10.0, target=0.6)


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    metas = train(QUICK, out, progress=False, log=lambda s: None)
    return out, metas


@pytest.mark.slow
def test_train_writes_three_loadable_runs_with_logs(quick_run):
    out, metas = quick_run
    assert set(metas) == {"pretrained", "baseline", "dynamic"}
    for phase in metas:
        run = load_run(out / phase)
        assert run.meta.training["config"]["seed"] == 0 and run.meta.training["tau"] == [1.0, 0.5]
        assert run.meta.arch_args["gated"] == (phase == "dynamic")
        lines = [json.loads(s) for s in (out / phase / "train_log.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in lines] == list(range(1, len(lines) + 1))
        assert not (out / phase / "train_state.safetensors").exists(), "a finished phase leaves no resume state"
    # even one epoch of MNIST training is far better than chance
    assert metas["baseline"].metrics["test_accuracy"] > 0.8
    assert metas["dynamic"].metrics["macs_ratio"]["mean"] < 1.0


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_weights(quick_run, tmp_path):
    reference, _ = quick_run

    def stop_after_first_dynamic_epoch(message):
        if message.startswith("dynamic epoch 1/"):
            raise _Stop

    with pytest.raises(_Stop):
        train(QUICK, tmp_path / "run", progress=False, log=stop_after_first_dynamic_epoch)
    assert (tmp_path / "run" / "dynamic" / "train_state.safetensors").exists()
    assert not (tmp_path / "run" / "dynamic" / "model.json").exists()

    messages = []
    train(QUICK, tmp_path / "run", progress=False, log=messages.append)
    assert any("pretrained: already trained" in m for m in messages)
    assert any("resuming after epoch 1" in m for m in messages)
    resumed = load_run(tmp_path / "run" / "dynamic").model.state_dict()
    expected = load_run(reference / "dynamic").model.state_dict()
    for k in expected:
        torch.testing.assert_close(resumed[k], expected[k], msg=k)
    log = (tmp_path / "run" / "dynamic" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in log] == [1, 2]


@pytest.mark.slow
def test_another_config_in_a_finished_folder_is_refused(quick_run):
    out, _ = quick_run
    with pytest.raises(TrainError, match="another config"):
        train(TrainConfig(pretrain_epochs=2, finetune_epochs=1), out, progress=False, log=lambda s: None)


def test_unknown_sparsity_is_refused(tmp_path):
    with pytest.raises(TrainError, match="expected 'macs' or 'reference'"):
        train(TrainConfig(sparsity="l0"), tmp_path, progress=False)
