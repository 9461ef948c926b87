"""The attention record and the cache key, host-free."""

from __future__ import annotations

import copy

import torch

from comfyui_layout_retouch.records import AttentionRecord, KeyedRecord, Same, keys_equal

LAYER = ("output", 6, 0)


def test_record_covers_and_stands_in_for_the_negative_half():
    record = AttentionRecord(stand_in_half=True)
    record.put(3, 0, LAYER, "keys", torch.ones(1, 4, 8))
    needs = frozenset({(LAYER, "keys")})
    assert record.covers(3, (0,), needs) and record.covers(3, (1, 0), needs)
    assert not record.covers(4, (0,), needs)
    assert torch.equal(record.get(3, 1, LAYER, "keys"), torch.ones(1, 4, 8))
    strict = AttentionRecord()
    strict.put(3, 0, LAYER, "keys", torch.ones(1, 4, 8))
    assert not strict.covers(3, (1, 0), needs)


def test_record_keeps_a_copy_on_its_device():
    source = torch.zeros(2, 4, 8)
    record = AttentionRecord(device="cpu")
    record.put(0, 0, LAYER, "values", source[:1])
    source += 1
    assert float(record.get(0, 0, LAYER, "values").sum()) == 0 and record.nbytes == 4 * 8 * 4


def test_keys_compare_tensors_by_value_and_objects_by_identity():
    patch = object()
    key = (Same(patch), torch.arange(3.0), "fp32")
    assert keys_equal(key, (Same(patch), torch.arange(3.0), "fp32"))
    assert not keys_equal(key, (Same(object()), torch.arange(3.0), "fp32"))
    assert not keys_equal(key, (Same(patch), torch.arange(3.0) + 1, "fp32"))
    assert not keys_equal(key, (Same(patch), torch.arange(3.0)))
    assert keys_equal(copy.deepcopy(key), key)  # a clone's deep copy keeps the identities


def test_keyed_record_starts_afresh_on_a_new_key():
    cache = KeyedRecord()
    first = cache.for_key(("a",), "cpu")
    first.put(0, 0, LAYER, "keys", torch.ones(1))
    assert cache.for_key(("a",), "cpu") is first
    second = cache.for_key(("b",), "cpu")
    assert second is not first and not second.tensors and cache.record is second


def test_keys_and_values_kept_as_the_attention_input_are_projected_when_read():
    record = AttentionRecord(stand_in_half=True)
    record.put(2, 0, LAYER, "self_in", torch.full((1, 4, 8), 2.0))
    calls = []

    def project(layer, kind, tensor):
        calls.append((layer, kind))
        return tensor * (10 if kind == "keys" else 100)

    needs = frozenset({(LAYER, "keys"), (LAYER, "values")})
    assert record.covers(2, (0, 1), needs) and not record.covers(3, (0,), needs)
    assert float(record.get(2, 1, LAYER, "keys", project)[0, 0, 0]) == 20  # half 0 stands in, then projected
    assert float(record.get(2, 0, LAYER, "values", project)[0, 0, 0]) == 200
    assert calls == [(LAYER, "keys"), (LAYER, "values")]
    try:
        record.get(2, 0, LAYER, "keys")
    except KeyError as e:
        assert "projection" in str(e)
    else:
        raise AssertionError("keys kept as the input need a projection")
    # A record of the values' own input (another pack's attn1 patch changed them) projects that one.
    record.put(2, 0, LAYER, "self_value_in", torch.full((1, 4, 8), 3.0))
    assert float(record.get(2, 0, LAYER, "values", project)[0, 0, 0]) == 300
    assert float(record.get(2, 0, LAYER, "keys", project)[0, 0, 0]) == 20


def test_record_says_which_needs_it_lacks():
    record = AttentionRecord()
    record.put(0, 0, LAYER, "self_in", torch.ones(1))
    record.put(5, 1, LAYER, "self_out", torch.ones(1))
    other = ("output", 7, 0)
    needs = {(LAYER, "keys"), (LAYER, "values"), (LAYER, "self_out"), (LAYER, "cross_out"), (other, "keys")}
    assert record.lacks(needs) == {(LAYER, "cross_out"), (other, "keys")}
