from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from samkit._checks import (
    as_class_names,
    as_float,
    as_image,
    check_binary,
    check_positive,
    check_probabilities,
    check_same_device,
    check_shape,
    check_unit_interval,
    resolve_image_sizes,
)


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


class TestAsImage:
    def test_uint8_becomes_unit_float(self) -> None:
        x = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
        out = as_image(x)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, x.float() / 255.0)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
    def test_float_dtypes_become_float32(self, dtype: torch.dtype) -> None:
        x = torch.rand(1, 3, 4, 4)
        out = as_image(x.to(dtype))
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, x, atol=1e-2, rtol=0)

    def test_module_dtype(self) -> None:
        assert as_image(torch.rand(1, 3, 2, 2), dtype=torch.float64).dtype == torch.float64

    def test_out_of_range_names_argument_and_range(self) -> None:
        with pytest.raises(ValueError, match=r"pics: expected float values in \[0, 1\].*255"):
            as_image(torch.full((1, 3, 2, 2), 255.0), name="pics")
        with pytest.raises(ValueError, match=r"got values in \[-2"):
            as_image(torch.full((1, 3, 2, 2), -2.0))

    def test_rounding_is_clamped(self) -> None:
        x = torch.full((1, 3, 2, 2), 1.0 + 1e-5)
        assert float(as_image(x).max()) == 1.0

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
    def test_non_finite(self, bad: float) -> None:
        x = torch.rand(1, 3, 2, 2)
        x[0, 1, 1, 0] = bad
        with pytest.raises(ValueError, match="images: expected finite pixel values"):
            as_image(x)

    @pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.int32])
    def test_ambiguous_dtypes(self, dtype: torch.dtype) -> None:
        with pytest.raises(TypeError, match=f"got dtype {dtype}"):
            as_image(torch.zeros(1, 3, 2, 2, dtype=dtype))

    def test_empty_batch_passes(self) -> None:
        assert as_image(torch.zeros(0, 3, 4, 4)).shape == (0, 3, 4, 4)


def test_as_float_casts_and_rejects_integers() -> None:
    assert as_float(torch.ones(2, dtype=torch.bfloat16), name="x").dtype == torch.float32
    with pytest.raises(TypeError, match="feats: expected a floating-point tensor"):
        as_float(torch.ones(2, dtype=torch.long), name="feats")


def test_check_binary() -> None:
    assert check_binary(torch.tensor([0, 1, 1]), name="m").tolist() == [False, True, True]
    with pytest.raises(ValueError, match=r"masks: expected a binary mask .* got value 0.5"):
        check_binary(torch.tensor([0.0, 0.5]), name="masks")


def test_check_probabilities() -> None:
    check_probabilities(torch.tensor([0.0, 1.0]), name="p")
    with pytest.raises(ValueError, match=r"p: expected probabilities in \[0, 1\]"):
        check_probabilities(torch.tensor([0.2, float("nan")]), name="p")
    with pytest.raises(ValueError, match="p: expected probabilities"):
        check_probabilities(torch.tensor([-0.1]), name="p")


def test_as_class_names() -> None:
    assert as_class_names("cat") == ["cat"]
    assert as_class_names(("cat", "dog")) == ["cat", "dog"]
    with pytest.raises(ValueError, match=r"class_names: expected at least one class name"):
        as_class_names([])
    with pytest.raises(TypeError, match="element of type int"):
        as_class_names(["cat", 3])  # type: ignore[list-item]
    assert as_class_names([], name="expressions", allow_empty=True) == []
    with pytest.raises(TypeError, match="expressions: expected a str or a sequence of str"):
        as_class_names(3, name="expressions", allow_empty=True)  # type: ignore[arg-type]


def test_check_positive() -> None:
    assert check_positive(3, name="g") == 3
    with pytest.raises(ValueError, match="grid_size: expected an int >= 1, got -1"):
        check_positive(-1, name="grid_size")


def test_check_unit_interval() -> None:
    assert check_unit_interval(1, name="t") == 1.0
    with pytest.raises(ValueError, match=r"threshold: expected a number in \[0, 1\], got nan"):
        check_unit_interval(float("nan"), name="threshold")
    with pytest.raises(TypeError, match="kappa: expected a number in"):
        check_unit_interval(True, name="kappa")


def test_resolve_image_sizes() -> None:
    images = torch.zeros(2, 3, 8, 6)
    assert resolve_image_sizes(images, None) == [(8, 6), (8, 6)]
    assert resolve_image_sizes(images, [(8, 6), (5, 4)]) == [(8, 6), (5, 4)]
    with pytest.raises(ValueError, match=r"image_sizes: expected 2 \(h, w\) pairs, got 1"):
        resolve_image_sizes(images, [(8, 6)])
    with pytest.raises(ValueError, match=r"image_sizes\[1\]: expected \(h, w\) with 1 <= h <= 8"):
        resolve_image_sizes(images, [(8, 6), (9, 4)])
