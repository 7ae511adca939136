"""`dropout_off`: a train-mode forward with dropout off is the eval-mode forward, and the rates come back."""

from __future__ import annotations

import pytest
import torch
from encoders import ENCODERS, make_encoder

from prefixtune import PrefixConfig, add_prefix
from prefixtune.train.dropout import dropout_off


def _rates(model: torch.nn.Module) -> list[float]:
    return [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]


@pytest.mark.parametrize("family", ENCODERS)
def test_a_train_mode_forward_without_dropout_is_the_eval_forward(family):
    model = add_prefix(make_encoder(family, head="sequence", labels=2), PrefixConfig(length=3, seed=1))
    ids = torch.randint(5, 60, (3, 7))
    model.eval()
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        noisy = model(input_ids=ids).logits
    assert not torch.allclose(noisy, reference, atol=1e-4)  # the tiny encoders do have dropout
    rates = _rates(model)
    with dropout_off(model) as switched, torch.no_grad():
        quiet = model(input_ids=ids).logits
    assert switched == len(rates) > 0
    torch.testing.assert_close(quiet, reference, rtol=0, atol=1e-6)
    assert _rates(model) == rates
    assert model.training


def test_the_rates_come_back_after_an_error():
    model = make_encoder("bert", head="sequence", labels=2)
    rates = _rates(model)
    with pytest.raises(KeyboardInterrupt), dropout_off(model):
        assert set(_rates(model)) == {0.0}
        raise KeyboardInterrupt
    assert _rates(model) == rates and max(rates) > 0
