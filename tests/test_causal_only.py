"""Without Transformer Engine the actor's forward runs RLinf's unpacked path with the model called
causal-only (``rlinf_pangu.patches.rlinf._CausalOnly``, patch ``rlinf.custom_forward:no-packing-without-TE``).

Its claim: dropping RLinf's 2-D padding mask is exact, because RLinf's unpacked path moves the left
padding to the right, so a valid token only ever attends to valid tokens before it. Checked here on
real megatron-core (the Pangu local spec, fp32, one gloo rank on the CPU, tests/harness) with a batch
of mixed lengths in RLinf's layout (left-padded prompts, right-padded responses, one full row):
RLinf's ``custom_forward`` through the patch gives, at every valid position, the logits of

* the padded, masked forward on the batch RLinf's unpacked path builds (``remove_left_padding``:
  the same tokens at the same positions), with the 4-D mask megatron-core's attention takes
  (causal, and no query attends to a padded key): the claim itself, **exact within 1e-6** (the
  masked keys get exp(-10000) = 0, the same terms are summed in the same places; measured 0);
* the padded, masked forward on the original left-padded batch, and each sequence alone without
  padding: the same model on the same tokens, but a row sits elsewhere in the batched GEMMs, whose
  reduction blocking then rounds differently. Measured 3.6e-6 / 3.7e-6 on logits up to 5.0 (a
  row in the same place, the full one, is bit-identical), so the tolerance there is 1e-5, the
  Megatron parity suite's fp32 tolerance.

Negative control: dropping the 2-D mask *without* removing the left padding (what ``_CausalOnly``
would do if RLinf's unpacked path did not move the padding right) is off by ~7.
"""

from __future__ import annotations

import pytest
import torch

from compare import CheckFailed, check, diff, worst
from harness import run_ranks

pytestmark = pytest.mark.slow

EXACT = 1e-6  # same tokens, same places: the mask is the only difference (see module doc)
TOL = 1e-5  # rows moved within the batch: fp32 reduction order (see module doc)
SEQ = 12
#: (left padding, valid tokens, right padding) per row: RLinf's reasoning batches are left-padded
#: prompts followed by right-padded responses; one row is full.
ROWS = [(0, 12, 0), (3, 7, 2), (7, 5, 0), (0, 9, 3)]


def _batch():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 150000, (len(ROWS), SEQ), generator=g)
    mask = torch.zeros(len(ROWS), SEQ, dtype=torch.bool)
    for i, (left, n, _right) in enumerate(ROWS):
        mask[i, left : left + n] = True
    ids = ids.masked_fill(~mask, 0)
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)  # as RLinf builds them for a left-padded batch
    return ids, mask, position_ids


def _padding_mask(valid: torch.Tensor) -> torch.Tensor:
    """megatron-core's 4-D attention mask (True = may not attend): causal, and no padded key."""
    n = valid.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).triu(1)
    return causal[None, None] | ~valid[:, None, None, :]


def causal_only_rank(rank: int, world_size: int, ckpt: str) -> dict:
    import rlinf_pangu
    from rlinf.hybrid_engines.megatron.megatron_model_manager import MegatronModelManager

    from rlinf.hybrid_engines.megatron.utils import remove_left_padding

    import sync_testlib as L
    from rlinf_pangu.patches.rlinf import _CausalOnly, make_custom_forward

    rlinf_pangu.register(sglang=False)
    model, _, _ = L.build_megatron(ckpt, 1, 1)
    model.eval()
    ids, mask, pos = _batch()
    forward = make_custom_forward(MegatronModelManager.custom_forward)
    out: dict = {}
    with torch.no_grad():
        got = forward(model, ids, mask, pos, sequence_parallel=False)  # RLinf's call, pack_seqs forced off
        # the claim: RLinf's right-padded batch, through the model with the full padding mask
        r_ids, r_mask, r_pos = remove_left_padding(ids, mask, pos)
        right = model(input_ids=r_ids, position_ids=r_pos, attention_mask=_padding_mask(r_mask))
        out["vs_masked_same_batch"] = diff("logits vs masked forward, RLinf's unpadded batch", got[mask], right[r_mask])
        padded = model(input_ids=ids, position_ids=pos, attention_mask=_padding_mask(mask))
        out["vs_padded_masked"] = diff("logits vs padded masked forward", got[mask], padded[mask])
        alone = []
        for i in range(len(ROWS)):
            sel = mask[i]
            one = model(input_ids=ids[i : i + 1, sel], position_ids=pos[i : i + 1, sel], attention_mask=None)
            alone.append(diff(f"row {i} logits vs the sequence alone", got[i, sel], one[0]))
        out["vs_alone"] = worst(alone, name="logits vs each sequence alone")
        # control: the 2-D mask dropped but the left padding left in place
        unshifted = _CausalOnly(model)(input_ids=ids, position_ids=pos, attention_mask=mask)
        out["control_left_padding_kept"] = diff("logits, padding kept left", unshifted[mask], padded[mask])
        out["full_row_equal"] = bool(torch.equal(got[0], padded[0]))
    out["logit_scale"] = float(padded[mask].abs().max())
    return out


@pytest.fixture(scope="module")
def result(tiny_fp32) -> dict:
    res = run_ranks(causal_only_rank, 1, str(tiny_fp32), timeout=600)[0]
    for k, v in res.items():  # the measured numbers, for the record (pytest -s)
        print(f"[causal-only] {k}: {v}")
    return res


def test_causal_only_forward_equals_the_masked_forward_on_the_same_batch(result):
    check(result["vs_masked_same_batch"], EXACT)


def test_causal_only_forward_equals_the_padded_masked_forward(result):
    check(result["vs_padded_masked"], TOL)


def test_causal_only_forward_equals_each_sequence_alone(result):
    check(result["vs_alone"], TOL)


def test_negative_control_left_padding_without_its_mask_is_wrong(result):
    d = result["control_left_padding_kept"]
    assert d.finite and d.max_abs > 1e3 * TOL, d
    with pytest.raises(CheckFailed):
        check(d, TOL)


def test_a_row_in_the_same_place_is_bit_identical(result):
    """What the 1e-5 above absorbs is placement, not the mask: the full row, which sits in the same
    place in both batches, comes out bit for bit the same."""
    assert result["full_row_equal"]
