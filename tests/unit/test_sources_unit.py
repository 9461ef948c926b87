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


def test_record_moves_a_step_at_a_time_and_keeps_every_tensor_apart():
    """A record kept on another device queues a step's copies and moves them together when the
    next step starts (or when settled); each tensor reads back as put, mixed dtypes included."""
    record = AttentionRecord(device="cpu")
    sources = {(s, h, kind): torch.randn(1, 3 + s, 4, dtype=torch.float16 if kind == "keys" else torch.float32)
               for s in range(3) for h in (0, 1) for kind in ("keys", "self_out")}
    for (s, h, kind), tensor in sources.items():
        record.put(s, h, LAYER, kind, tensor)
        if s == 1 and h == 0 and kind == "keys":  # step 0 moved once step 1 began, step 1 still queued
            assert {key[0] for key in record._kept} == {0} and {key[0] for key in record._queued} == {1}
        tensor.zero_()  # the UNet may reuse its tensors: the record holds copies
    assert len(record.tensors) == len(sources) and not record._queued
    for (s, h, kind), tensor in sources.items():
        kept = record.get(s, h, LAYER, kind)
        assert kept.dtype == tensor.dtype and kept.shape == tensor.shape and bool(kept.abs().sum() > 0)
    assert len(record._steps[0]) == 2  # one buffer per dtype for the step
    on = record.get(2, 1, LAYER, "keys", device=torch.device("cpu"))
    assert torch.equal(on, record.tensors[(2, 1, LAYER, "keys")]) and record._loaded[0] == 2
    record.release()
    assert record._loaded[0] is None


def test_step_of_a_call_is_looked_up_once_per_sigma_tensor(monkeypatch):
    """Every layer of a call passes the same sigma tensor: its value is read (a wait for the GPU
    there) once per call, not once per layer."""
    from comfyui_layout_retouch.records import StepOfCall

    reads = []
    original = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: reads.append(1) or original(self, *a, **k))
    step_of = StepOfCall(torch.tensor([14.6, 7.0, 3.0, 1.0]))
    sigma = torch.tensor([7.0, 7.0])
    assert [step_of(sigma) for _ in range(16)] == [1] * 16  # 16 layers of one call
    assert step_of(torch.tensor([3.0])) == 2 and step_of(torch.tensor([5.0])) is None
    assert len(reads) == 3
    assert copy.deepcopy(step_of).last == (None, None, None)  # a clone's patches start afresh
