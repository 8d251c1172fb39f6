import pytest
import torch

from companion import config, device


def test_profile_and_seed_from_env(monkeypatch):
    monkeypatch.delenv("BOOK_PROFILE", raising=False)
    monkeypatch.delenv("BOOK_SEED", raising=False)
    assert config.profile() == "ci" and config.seed() == 0
    monkeypatch.setenv("BOOK_PROFILE", "GPU")
    monkeypatch.setenv("BOOK_SEED", "7")
    assert config.profile() == "gpu" and config.seed() == 7
    assert config.pick(ci=1, gpu=2) == 2


@pytest.mark.parametrize("var,value", [("BOOK_PROFILE", "tpu"), ("BOOK_SEED", "seven")])
def test_bad_env_is_named(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=var):
        config.profile() if var == "BOOK_PROFILE" else config.seed()


def test_seed_everything_is_reproducible():
    config.seed_everything(3)
    a = torch.randn(4)
    config.seed_everything(3)
    assert torch.equal(a, torch.randn(4))


def test_setup_returns_settings(monkeypatch):
    monkeypatch.setenv("BOOK_SEED", "5")
    monkeypatch.delenv("BOOK_DEVICE", raising=False)
    before = torch.get_num_threads()
    try:
        s = config.setup(threads=1)
        assert (s.seed, s.threads, torch.get_num_threads()) == (5, 1, 1)
        assert s.pick(ci="small", gpu="big") == ("big" if s.profile == "gpu" else "small")
        assert s.device == device.pick_device()
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="n must be"):
        config.set_threads(0)


def test_pick_device_and_report(monkeypatch):
    assert device.pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            device.pick_device("cuda")
    report = device.env_report()
    for word in ("torch", "transformers", "profile", "device"):
        assert word in report
