import pytest
import torch

from castlib.padding import last_token_index, pad, position_ids_from_mask


def test_last_token_index_left_and_right():
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert last_token_index(left).tolist() == [3, 3, 3]
    assert last_token_index(right).tolist() == [1, 3, 0]


def test_last_token_index_rejects_empty_rows():
    with pytest.raises(ValueError, match="no real token"):
        last_token_index(torch.tensor([[1, 1], [0, 0]]))


def test_position_ids_ignore_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids_from_mask(mask).tolist() == [
        [0, 0, 0, 1, 2],
        [0, 1, 2, 3, 4],
        [0, 1, 2, 2, 2],
    ]


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_roundtrip(side):
    rows = [[5, 6, 7], [8]]
    ids, mask = pad(rows, pad_id=0, side=side)
    for b, row in enumerate(rows):
        assert ids[b][mask[b].bool()].tolist() == row
    assert last_token_index(mask).tolist() == ([2, 2] if side == "left" else [2, 0])
