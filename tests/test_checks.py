from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from samkit._checks import check_same_device, check_shape


class TestCheckShape:
    def test_smoke(self) -> None:
        assert check_shape(torch.zeros(2, 3, 4, 5), "B D h w") == {"B": 2, "D": 3, "h": 4, "w": 5}

    def test_fixed_sizes_and_wildcards(self) -> None:
        assert check_shape(torch.zeros(2, 3, 7, 7), "B 3 * *") == {"B": 2}
        with pytest.raises(ValueError, match=r"expected shape \(B, 3, H, W\), got \(2, 4, 7, 7\)"):
            check_shape(torch.zeros(2, 4, 7, 7), "B 3 H W")

    def test_wrong_rank_says_expected_and_got(self) -> None:
        with pytest.raises(
            ValueError, match=r"features: expected 4 dims \(B, D, h, w\), got shape \(2, 3, 4\)"
        ):
            check_shape(torch.zeros(2, 3, 4), "B D h w", name="features")

    def test_repeated_letter_must_agree(self) -> None:
        assert check_shape(torch.zeros(3, 3), "N N") == {"N": 3}
        with pytest.raises(ValueError, match="N=3"):
            check_shape(torch.zeros(3, 4), "N N")

    def test_known_sizes(self) -> None:
        sizes = check_shape(torch.zeros(2, 5), "B K")
        with pytest.raises(ValueError, match=r"B=2.*B=3"):
            check_shape(torch.zeros(3, 5, 8), "B K D", known=sizes)

    def test_leading_ellipsis(self) -> None:
        assert check_shape(torch.zeros(2, 3, 4, 5), "... h w") == {"h": 4, "w": 5}
        with pytest.raises(ValueError, match="at least 2 dims"):
            check_shape(torch.zeros(5), "... h w")

    def test_not_a_tensor(self) -> None:
        with pytest.raises(TypeError, match="expected a torch.Tensor"):
            check_shape([1, 2], "N")  # type: ignore[arg-type]

    @given(st.lists(st.integers(1, 5), min_size=1, max_size=5))
    def test_roundtrip_property(self, shape: list[int]) -> None:
        names = [f"a{i}" for i in range(len(shape))]
        assert check_shape(torch.zeros(*shape), " ".join(names)) == dict(
            zip(names, shape, strict=True)
        )


def test_check_same_device_passes_on_one_device() -> None:
    check_same_device(torch.zeros(1), None, torch.ones(2), names=("a", "b", "c"))


def test_check_same_device_raises_with_names() -> None:
    meta = torch.zeros(1, device="meta")
    with pytest.raises(ValueError, match="a is on cpu but b is on meta"):
        check_same_device(torch.zeros(1), meta, names=("a", "b"))
