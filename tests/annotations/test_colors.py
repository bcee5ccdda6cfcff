import pytest

from napari_ssmamba.annotations import default_class_color, from_hex, pack_rgb, to_hex, unpack_rgb


@pytest.mark.parametrize(
    ("packed", "rgb"),
    [
        (-65536, (255, 0, 0)),
        (-16711936, (0, 255, 0)),
        (-65281, (255, 0, 255)),
        (0x00C80000, (200, 0, 0)),
    ],
)
def test_unpack_qupath_colours(packed, rgb):
    assert unpack_rgb(packed) == rgb


def test_pack_is_the_inverse_and_opaque():
    assert pack_rgb((3, 128, 17)) == -16547823  # class_1 in the demo project's classes.json
    assert unpack_rgb(pack_rgb((1, 2, 3))) == (1, 2, 3)


def test_default_class_colours():
    assert default_class_color("Tumor") == (200, 0, 0)
    assert default_class_color("Immune cells") == (160, 90, 160)
    assert default_class_color("Region*") == (0, 0, 180)
    assert default_class_color("my class") == default_class_color("my class")
    assert default_class_color("my class") != default_class_color("my other class")
    assert all(0 <= c <= 255 for c in default_class_color("x"))


def test_hex():
    assert to_hex((200, 0, 17)) == "#c80011"
    assert from_hex("#c80011") == (200, 0, 17)
    with pytest.raises(ValueError):
        from_hex("red")
