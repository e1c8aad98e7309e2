"""A safetensors file written as a stream is the file safetensors itself reads, whatever the
pieces the tensors come in; an entry whose pieces do not fill its shape is refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load

from pscluster.model.safetensors_stream import Entry, rechunk, stream


def test_streamed_entries_read_back_with_safetensors() -> None:
    whole = {
        "b": torch.randn(3, 2),
        "a.ids": torch.arange(5),
        "flags": torch.tensor([True, False]),
        "half": torch.randn(4).half(),
        "empty": torch.zeros(0, 3),
    }
    table = torch.randn(10, 4)
    entries = [Entry.of(k, v) for k, v in whole.items()]
    pieces = [table[:3], table[3:6], table[6:]]
    entries.append(Entry("table", torch.float32, (10, 4), lambda: iter(pieces)))

    back = load(b"".join(rechunk(stream(entries), 7)))

    assert back.keys() == {*whole, "table"}
    assert all(torch.equal(back[k], v) for k, v in whole.items())
    assert torch.equal(back["table"], table)


def test_an_entry_that_does_not_fill_its_shape_fails_the_stream() -> None:
    short = Entry("t", torch.float32, (4, 2), lambda: iter([torch.zeros(3, 2)]))
    with pytest.raises(ValueError, match="needs 32"):
        b"".join(stream([short]))
